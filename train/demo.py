"""End-to-end demo on this machine (``make demo`` = ``python -m train.demo``).

1. writes synthetic SA-1B shards with ``data.synthetic`` (train and held-out sets);
2. trains the tiny config on them through the real tf.data pipeline (progress bar,
   metrics, TensorBoard events, checkpoints);
3. evaluates single-point mIoU on the held-out images (``train.evaluate``), before
   and after training, and writes overlay PNGs of the predictions;
4. measures the trained model with the zero-shot evaluator (``sam_jax.evaluation``)
   on the held-out shards: the click curve (1, 3, 5 clicks), oracle vs
   ambiguity-aware mIoU at one click, and proposal AR@100 (AMG on a 16x16 grid to
   keep the demo short, otherwise the paper's proposal settings);
5. prints where everything went. About 10 minutes on 2 CPU cores.

Options: ``--out DIR`` (default ``/tmp/sam_jax_demo``), ``--steps N``,
``--train-images N``, ``--fresh`` (delete ``--out`` first; otherwise an existing
run resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

# Held-out masks smaller than this many pixels (about 1 % of a 192 px image) are not
# scored, as training skips masks under 12 of the 32x32 target cells.
DEMO_MIN_AREA = 400


def zero_shot_eval(module, params, eval_dir: str, out: str, proposal_grid: int = 16) -> dict:
    """Click curve (1, 3, 5), oracle vs ambiguity-aware at one click and AR@100 of the
    trained model on the held-out shards (``sam_jax.evaluation``)."""
    from sam_jax import SamModel
    from sam_jax.evaluation import evaluate, load_dataset

    model = SamModel(module=module, params=params)
    info = {
        "checkpoint": "trained in this demo",
        "variant": "tiny",
        "step": None,
        "image_size": module.config.image_size,
    }
    points = evaluate(
        "points",
        load_dataset(eval_dir, min_area=DEMO_MIN_AREA),
        model,
        out=os.path.join(out, "eval_points"),
        model_info=info,
        clicks=(1, 3, 5),
    )
    props = evaluate(
        "proposals",
        load_dataset(eval_dir, keep_empty=True),
        model,
        out=os.path.join(out, "eval_proposals"),
        model_info=info,
        points_per_side=proposal_grid,
    )
    m = points["metrics"]
    return dict(
        click_miou={n: round(v, 4) for n, v in m["miou"].items()},
        miou_1click_ambiguity_aware=round(m["miou"]["1"], 4),
        miou_1click_oracle=round(m["miou_oracle_1"], 4),
        noc90=round(m["noc"]["90"], 3),
        proposal_ar100=round(props["metrics"]["AR@100"], 4),
        points_images_per_s=round(points["timing"]["images_per_s"], 2),
        proposals_images_per_s=round(props["timing"]["images_per_s"], 2),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/sam_jax_demo")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--train-images", type=int, default=192)
    p.add_argument("--eval-images", type=int, default=16)
    p.add_argument("--fresh", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    if a.fresh and os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out, exist_ok=True)

    from data.synthetic import write_shards

    train_dir, eval_dir = os.path.join(a.out, "shards_train"), os.path.join(a.out, "shards_eval")
    for d, n, seed in ((train_dir, a.train_images, 0), (eval_dir, a.eval_images, 12345)):
        if not os.path.isdir(d):
            write_shards(d, n, images_per_shard=32, seed=seed, short_side=192, num_objects=5)
    print(
        f"[demo] synthetic shards: {train_dir} ({a.train_images} images), {eval_dir} "
        f"({a.eval_images} held-out) [{time.time() - t0:.0f}s]",
        flush=True,
    )

    import jax.numpy as jnp

    from configs.tiny import get_config
    from train.evaluate import eval_batches, single_point_miou
    from train.loop import run
    from train.train_step import build_module

    c = get_config()
    c.train.workdir = os.path.join(a.out, "run")
    c.train.num_steps = a.steps
    c.train.log_every = 100
    c.ckpt.every = 400
    c.data.train_dir, c.data.eval_dir = train_dir, eval_dir
    c.data.global_batch_size, c.data.masks_per_image = 4, 16
    # most synthetic masks are tiny at 128 px input (32x32 targets); train and evaluate
    # on those with at least 12 target cells (about 1.2 % of the image)
    c.loss.min_target_cells = 12
    c.sim.num_passes, c.sim.num_correction_points, c.sim.unroll = 5, 3, 4
    c.optim.decay_steps = (int(a.steps * 0.8),)
    module = build_module(c).clone(dtype=jnp.float32)
    evaluate = lambda params, overlays=None: single_point_miou(
        module,
        params,
        eval_batches(c, module.config.image_size, eval_dir, batch_size=4),
        overlays,
        min_cells=c.loss.min_target_cells,
    )

    summary = run(c)
    t_train = time.time() - t0
    import jax

    from train.sharding import make_mesh
    from train.train_step import Trainer  # untrained reference: the initial state of the seed

    init = Trainer(c, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])).init_state(c.train.seed)
    before = evaluate(init.params)
    after = evaluate(summary["state"].params, os.path.join(a.out, "overlays"))
    zero_shot = zero_shot_eval(module, summary["state"].params, eval_dir, a.out)
    losses = summary["losses"]
    result = dict(
        steps=summary["end_step"],
        first_loss=losses.get(1),
        last_loss=losses.get(summary["end_step"]),
        miou_untrained=before["miou"],
        miou_single_point=after["miou"],
        eval_masks=after["num_masks"],
        **zero_shot,
        seconds=round(time.time() - t0, 1),
        train_seconds=round(t_train, 1),
    )
    print("[demo] result: " + json.dumps(result), flush=True)
    print(f"[demo] checkpoints:  {c.train.workdir}/checkpoints")
    print(f"[demo] metrics:      {c.train.workdir}/metrics.jsonl, TensorBoard: {c.train.workdir}/tb")
    print(f"[demo] overlays:     {os.path.join(a.out, 'overlays')} ({len(after['overlays'])} PNGs)")
    print(
        f"[demo] zero-shot:    {os.path.join(a.out, 'eval_points')}, "
        f"{os.path.join(a.out, 'eval_proposals')} (results.json, results.md, plots)"
    )
    print(
        f"[demo] evaluate any checkpoint: python -m train.evaluate --config configs/tiny.py "
        f"--workdir {c.train.workdir} --data {eval_dir} --overlays DIR "
        f"--config.data.masks_per_image=16 --config.loss.min_target_cells=12"
    )
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
