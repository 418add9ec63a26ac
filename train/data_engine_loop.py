"""The data engine's loop at demo scale (paper sections 4 and 7.6): ``python -m train.data_engine_loop``.

1. **Manual stage**: synthetic SA-1B shards (``data.synthetic``) stand in for the
   human-annotated masks; the tiny SAM is trained on them (``train.loop.run``).
2. **Fully automatic stage**: that model annotates unlabeled synthetic images (plain
   JPEGs, their ground truth thrown away) with ``sam_jax.automatic_generation``: SA-1B
   shards written by the generator (the paper's thresholds and NMS; a smaller grid
   and one crop layer at this scale, see ``--grid``).
3. **Retraining on the mixture**: from the stage-1 weights, ``--retrain-steps`` more
   steps on manual shards oversampled ``--manual-weight`` times next to the automatic
   shards (a mixture of sources in ``data.train_dir``; the paper's best setting is
   10x), and, as the control (unless ``--no-control``), the same steps on the manual
   shards alone.
4. **Evaluation** before and after, on held-out synthetic shards: the point protocol of
   ``sam_jax.evaluation`` (mIoU after 1, 3 and 5 clicks, the 1-click oracle).

Writes ``<out>/result.json`` (every figure, the generated corpus's size and the
timings) and prints it. ``--fresh`` starts over; otherwise finished stages are
reused (training resumes from its checkpoints, generation from its manifests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from sam_jax.atomic_io import write_json


def points_miou(module, params, eval_dir: str, out: str) -> dict:
    """The point protocol (1, 3, 5 clicks and the 1-click oracle) on ``eval_dir``."""
    from configs.demo import EVAL_MIN_AREA
    from sam_jax import SamModel
    from sam_jax.evaluation import evaluate, load_dataset

    info = {"checkpoint": out, "variant": "tiny", "step": None, "image_size": module.config.image_size}
    res = evaluate(
        "points",
        load_dataset(eval_dir, min_area=EVAL_MIN_AREA),
        SamModel(module=module, params=params),
        out=out,
        model_info=info,
        clicks=(1, 3, 5),
    )
    m = res["metrics"]
    return {
        **{f"miou_{n}click": round(v, 4) for n, v in m["miou"].items()},
        "miou_1click_oracle": round(m["miou_oracle_1"], 4),
    }


def _config(workdir: str, steps: int):
    """The demo's config (``configs.demo``: the tiny SAM on scenes it learns) for ``steps`` steps."""
    from configs.demo import get_config, set_steps

    c = get_config()
    set_steps(c, steps)
    c.train.workdir, c.train.log_every = workdir, 100
    c.ckpt.every = 200
    return c


def main(argv=None) -> int:
    from configs.demo import EVAL_IMAGES, TRAIN_IMAGES, get_config

    p = argparse.ArgumentParser(prog="python -m train.data_engine_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/sam_jax_data_engine")
    p.add_argument("--manual-images", type=int, default=TRAIN_IMAGES, help="as train.demo's training set")
    p.add_argument("--unlabeled-images", type=int, default=128)
    p.add_argument("--eval-images", type=int, default=EVAL_IMAGES, help="as train.demo's held-out set")
    demo_steps = get_config().train.num_steps
    p.add_argument("--steps", type=int, default=demo_steps, help="stage-1 training steps (configs.demo's)")
    p.add_argument("--retrain-steps", type=int, default=250)
    p.add_argument("--manual-weight", type=int, default=10, help="oversampling of the manual shards")
    p.add_argument("--grid", type=int, default=16, help="points per side of the automatic stage")
    p.add_argument("--crop-layers", type=int, default=1)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="automatic stage (paper: 0.88)")
    p.add_argument("--stability-thresh", type=float, default=0.95, help="automatic stage (paper: 0.95)")
    p.add_argument("--no-control", action="store_true", help="skip the manual-only retraining")
    p.add_argument("--fresh", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    if a.fresh and os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out, exist_ok=True)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 1)
        print(f"[loop] {name}: {timings[name]} s", flush=True)
        return time.time()

    # 0. data: manual shards, held-out shards, unlabeled images
    from configs.demo import SCENE
    from data.synthetic import encode_jpeg, generate_image, write_shards

    manual, held_out = os.path.join(a.out, "manual"), os.path.join(a.out, "held_out")
    unlabeled, auto = os.path.join(a.out, "unlabeled"), os.path.join(a.out, "automatic")
    for d, n, seed in ((manual, a.manual_images, 0), (held_out, a.eval_images, 12345)):
        if not os.path.isdir(d):
            write_shards(d, n, images_per_shard=32, seed=seed, **SCENE)
    os.makedirs(unlabeled, exist_ok=True)
    for i in range(a.unlabeled_images):
        path = os.path.join(unlabeled, f"img_{i:05d}.jpg")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(encode_jpeg(generate_image(777, i, **SCENE).image))
    t = lap("data", t0)

    import jax
    import jax.numpy as jnp

    from sam_jax.checkpoint import save_params
    from train.loop import run
    from train.sharding import make_mesh
    from train.train_step import Trainer, build_module

    # 1. manual stage
    c1 = _config(os.path.join(a.out, "run_manual"), a.steps)
    c1.data.train_dir = manual
    module = build_module(c1).clone(dtype=jnp.float32)
    init = Trainer(c1, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])).init_state(c1.train.seed)
    result: dict = {
        "untrained": points_miou(module, init.params, held_out, os.path.join(a.out, "eval_untrained"))
    }
    stage1 = run(c1)["state"].params
    stage1_file = os.path.join(a.out, "stage1.npz")
    save_params(jax.device_get(stage1), stage1_file)
    t = lap("train_manual", t)
    result["manual"] = points_miou(module, stage1, held_out, os.path.join(a.out, "eval_manual"))
    t = lap("eval_manual", t)

    # 2. fully automatic stage with the stage-1 model
    from sam_jax import SamModel
    from sam_jax import automatic_generation as ag

    settings = ag.settings_for(
        "sa1b",
        points_per_side=a.grid,
        crop_n_layers=a.crop_layers,
        pred_iou_thresh=a.pred_iou_thresh,
        stability_score_thresh=a.stability_thresh,
    )
    writer = ag.ShardWriter(
        ag.make_generator(SamModel(module=module, params=stage1), settings),
        ag.list_inputs([unlabeled]),
        auto,
        settings,
        images_per_shard=32,
    )
    gen_stats = writer.run()
    manifests = ag.read_manifests(auto)
    written = sum(len(m["images"]) for m in manifests)
    masks = sum(m["masks"] for m in manifests)
    result["automatic_corpus"] = {
        "images_in": a.unlabeled_images,
        "images_with_masks": written,
        "masks": masks,
        "masks_per_image": round(masks / max(written, 1), 2),
        "settings": settings,
        "images_per_s_this_run": round(gen_stats["images_per_second"], 3),
    }
    t = lap("generate", t)

    # 3. retraining from the stage-1 weights: the mixture, and manual alone as the control
    # a sample comes from a source with probability weight / sum(weights): the weight is the
    # source's image count times its oversampling (data.subsets)
    mixture = [
        (os.path.join(manual, "*.tar"), a.manual_weight * a.manual_images, "manual"),
        (os.path.join(auto, "*.tar"), max(written, 1), "automatic"),
    ]
    runs = {"mixture": dict(train_dir=mixture), "manual_only_control": dict(train_dir=manual)}
    if a.no_control:
        runs.pop("manual_only_control")
    if written == 0:
        print("[loop] the automatic stage kept no mask: no mixture to retrain on", flush=True)
        runs.pop("mixture")
    for name, data in runs.items():
        c2 = _config(os.path.join(a.out, f"run_{name}"), a.retrain_steps)
        c2.model.init_checkpoint = stage1_file
        c2.optim.warmup_steps = 0
        for k, v in data.items():
            setattr(c2.data, k, v)
        params = run(c2)["state"].params
        t = lap(f"retrain_{name}", t)
        result[name] = points_miou(module, params, held_out, os.path.join(a.out, f"eval_{name}"))
        t = lap(f"eval_{name}", t)

    result["steps"] = {"manual": a.steps, "retrain": a.retrain_steps, "manual_weight": a.manual_weight}
    result["timings_s"] = dict(timings, total=round(time.time() - t0, 1))
    result["cpu_seconds"] = round(time.process_time(), 1)
    write_json(os.path.join(a.out, "result.json"), result, indent=1)
    print("[loop] result: " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
