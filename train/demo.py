"""End-to-end demo on this machine (``make demo`` = ``python -m train.demo``).

1. writes synthetic SA-1B shards with ``data.synthetic`` (train and held-out sets);
2. trains the tiny config on them through the real tf.data pipeline (progress bar,
   metrics, TensorBoard events, checkpoints);
3. evaluates single-point mIoU on the held-out images (``train.evaluate``), before
   and after training, and writes overlay PNGs of the predictions;
4. prints where everything went. About 10 minutes on 2 CPU cores.

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
    print(f"[demo] synthetic shards: {train_dir} ({a.train_images} images), {eval_dir} "
          f"({a.eval_images} held-out) [{time.time() - t0:.0f}s]", flush=True)

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
        module, params, eval_batches(c, module.config.image_size, eval_dir, batch_size=4),
        overlays, min_cells=c.loss.min_target_cells)

    summary = run(c)
    t_train = time.time() - t0
    from train.train_step import Trainer  # untrained reference: the initial state of the seed
    from train.sharding import make_mesh
    import jax

    init = Trainer(c, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])).init_state(c.train.seed)
    before = evaluate(init.params)
    after = evaluate(summary["state"].params, os.path.join(a.out, "overlays"))
    losses = summary["losses"]
    result = dict(
        steps=summary["end_step"], first_loss=losses.get(1), last_loss=losses.get(summary["end_step"]),
        miou_untrained=before["miou"], miou_single_point=after["miou"],
        eval_masks=after["num_masks"], seconds=round(time.time() - t0, 1),
        train_seconds=round(t_train, 1))
    print("[demo] result: " + json.dumps(result), flush=True)
    print(f"[demo] checkpoints:  {c.train.workdir}/checkpoints")
    print(f"[demo] metrics:      {c.train.workdir}/metrics.jsonl, TensorBoard: {c.train.workdir}/tb")
    print(f"[demo] overlays:     {os.path.join(a.out, 'overlays')} ({len(after['overlays'])} PNGs)")
    print(f"[demo] evaluate any checkpoint: python -m train.evaluate --config configs/tiny.py "
          f"--workdir {c.train.workdir} --data {eval_dir} --overlays DIR "
          f"--config.data.masks_per_image=16 --config.loss.min_target_cells=12")
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
