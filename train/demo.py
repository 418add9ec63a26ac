"""End-to-end demo on this machine (``make demo`` = ``python -m train.demo``).

1. writes synthetic SA-1B shards with ``data.synthetic`` (train and held-out sets,
   scenes of ``configs.demo.SCENE``);
2. trains the demo config (``configs/demo.py``: the tiny SAM with the paper's
   interactive training, section 3 and appendix A) on them through the real tf.data
   pipeline (progress bar, metrics, TensorBoard events, checkpoints);
3. measures the trained model with the point protocol of the zero-shot evaluator
   (``sam_jax.evaluation``, paper section 7.1) on the held-out shards: mIoU after 1, 3
   and 5 clicks (the most confident of 3 masks at one click) and the oracle at one click;
4. draws ``curves.png`` (loss and training mIoU against steps) and ``clicks/``
   (held-out images with their 1-, 3- and 5-click results side by side);
5. prints where everything went. About 700 CPU-seconds on 2 cores (7-10 minutes wall:
   the machine's speed varies by that much); the train step compiles while the shards
   are being written.

Options: ``--out DIR`` (default ``/tmp/sam_jax_demo``), ``--steps N``, ``--config FILE``
(default ``configs/demo.py``) and ``--config.<key>=<value>`` overrides,
``--train-images N``, ``--eval-images N``, ``--proposals`` (also proposal AR@100 with
the automatic mask generator on a 16x16 grid), ``--fresh`` (delete ``--out`` first;
otherwise an existing run resumes from its checkpoint).
"""

from __future__ import annotations

import os

# Before tensorflow or jax is imported: no C++ start-up notices (oneDNN and the like)
# on the console, only the demo's own progress. TensorFlow only decodes the shards here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# LLVM at -O1 instead of -O2 (unless XLA_FLAGS sets a level): the tiny model's steps are
# small kernels whose speed does not change, while compiling the state's initialisation
# takes half as long (10 s against 20 s) and the train step about 5 s less.
# Eigen's single-threaded kernels (unless XLA_FLAGS says otherwise): the step's ops are
# too small to gain from being split over the 2 cores, which XLA's executor and the
# tf.data pipeline share anyway (in the loop, 0.285 s a step against 0.337 s with
# multi-threaded kernels; 2026-12-02, back to back).
_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
for _flag, _value in (("--xla_backend_optimization_level", "1"), ("--xla_cpu_multi_thread_eigen", "false")):
    if _flag not in _XLA_FLAGS:
        _XLA_FLAGS = f"{_XLA_FLAGS} {_flag}={_value}".strip()
os.environ["XLA_FLAGS"] = _XLA_FLAGS

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402

# Panels of the click pictures are scaled so that their longest side is this.
PANEL_SIZE = 384
CLICKS = (1, 3, 5)


def _quiet_absl() -> None:
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl comes with jax/tensorflow; nothing to quieten without it
        pass


def points_eval(model, eval_dir: str, out: str, min_area: int) -> dict:
    """Click curve (1, 3, 5) and the oracle at one click on the held-out shards."""
    from configs.demo import EVAL_MASKS_PER_BATCH
    from sam_jax.evaluation import evaluate, load_dataset

    info = {"checkpoint": "trained in this demo", "variant": "tiny", "step": None}
    info["image_size"] = model.module.config.image_size
    res = evaluate(
        "points",
        load_dataset(eval_dir, min_area=min_area),
        model,
        out=os.path.join(out, "eval_points"),
        model_info=info,
        clicks=CLICKS,
        masks_per_batch=EVAL_MASKS_PER_BATCH,
    )
    m = res["metrics"]
    return dict(
        click_miou={n: round(v, 4) for n, v in m["miou"].items()},
        miou_1click_most_confident=round(m["miou"]["1"], 4),
        miou_1click_oracle=round(m["miou_oracle_1"], 4),
        miou_5click=round(m["miou"]["5"], 4),
        noc90=round(m["noc"]["90"], 3),
        eval_masks=int(m["num_masks"]),
    )


def proposals_eval(model, eval_dir: str, out: str, grid: int = 16) -> dict:
    """Proposal AR@100 (automatic mask generator on a ``grid`` x ``grid`` point grid)."""
    from sam_jax.evaluation import evaluate, load_dataset

    info = {"checkpoint": "trained in this demo", "variant": "tiny", "step": None}
    info["image_size"] = model.module.config.image_size
    props = evaluate(
        "proposals",
        load_dataset(eval_dir, keep_empty=True),
        model,
        out=os.path.join(out, "eval_proposals"),
        model_info=info,
        points_per_side=grid,
    )
    return dict(proposal_ar100=round(props["metrics"]["AR@100"], 4))


def _save_figure(fig, path: str) -> None:
    from sam_jax.atomic_io import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def plot_curves(
    metrics_jsonl: str, path: str, held_out: dict | None = None, focal_weight: float = 20.0
) -> str:
    """``path``: training loss (left) and first/last-pass mIoU (right) against steps, from
    the run's ``metrics.jsonl``; ``held_out`` (``{"1 click": v, ...}``) adds the held-out
    figures of the final model as markers at the last step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows: dict[int, dict] = {}
    with open(metrics_jsonl) as f:
        for line in f:
            r = json.loads(line)
            rows[int(r["step"])] = r  # a resumed run re-logs a step: the last one wins
    steps = sorted(rows)
    get = lambda k: [rows[s][k] for s in steps]
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax_l.plot(steps, get("loss"), label="total")
    ax_l.plot(steps, [focal_weight * v for v in get("focal")], label=f"{focal_weight:g} x focal", alpha=0.7)
    ax_l.plot(steps, get("dice"), label="dice", alpha=0.7)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("step")
    ax_l.set_title("training loss")
    ax_l.legend()
    ax_m.plot(steps, get("miou_first"), label="first pass, most confident")
    ax_m.plot(steps, get("miou_first_oracle"), label="first pass, oracle of 3", alpha=0.7)
    ax_m.plot(steps, get("miou_last"), label="last pass (after corrections)")
    for (label, v), marker in zip((held_out or {}).items(), "osD^"):
        ax_m.plot([steps[-1]], [v], marker, label=f"held-out, {label}")
    ax_m.set_ylim(0, 1)
    ax_m.set_xlabel("step")
    ax_m.set_title("mIoU on the training batches")
    ax_m.legend(loc="lower right", fontsize=8)
    ax_m.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def _upsample(a: np.ndarray, f: int) -> np.ndarray:
    return np.repeat(np.repeat(a, f, axis=-2), f, axis=-1) if a.ndim == 3 else a


def click_pictures(model, eval_dir: str, out_dir: str, min_area: int, num_images: int = 4) -> list[str]:
    """One PNG per held-out image: ground truth, then the predictions after 1, 3 and 5
    clicks of the point protocol (clicks: green foreground, red background), scaled up
    to :data:`PANEL_SIZE` px."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    from configs.demo import EVAL_MASKS_PER_BATCH
    from sam_jax.evaluation import load_dataset
    from sam_jax.evaluation.points import PointSettings, evaluate_image
    from sam_jax.predictor import SamPredictor
    from sam_jax.visualize import overlay

    os.makedirs(out_dir, exist_ok=True)
    predictor = SamPredictor(model)
    settings = PointSettings(clicks=CLICKS, masks_per_batch=EVAL_MASKS_PER_BATCH)
    paths = []
    for item in load_dataset(eval_dir, min_area=min_area):
        if len(paths) == num_images:
            break
        image, gt = item.load()
        if len(gt) < 2:
            continue
        res = evaluate_image(predictor, image, gt, settings, keep_masks=True)
        f = max(1, PANEL_SIZE // max(image.shape[:2]))
        size = (image.shape[1] * f, image.shape[0] * f)
        big = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        panels = [("ground truth", overlay(big, masks=_upsample(gt, f)))]
        for n in CLICKS:
            clicks = res["clicks"][:, :n].reshape(-1, 3)
            pts = (clicks[:, :2] + 0.5) * f - 0.5
            pic = overlay(big, masks=_upsample(res["masks"][:, n - 1], f), points=pts, labels=clicks[:, 2])
            word = "click" if n == 1 else "clicks"
            panels.append((f"{n} {word}: mIoU {res['iou'][:, n - 1].mean():.2f}", pic))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.5), dpi=100)
        for ax, (title, pic) in zip(axes, panels):
            ax.imshow(pic)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        fig.suptitle(f"held-out image {item.image_id}: {len(gt)} masks, each prompted alone", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"clicks_{len(paths):02d}.png")
        _save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    from sam_jax.host_memory import keep_freed_memory

    # First, before jax and tensorflow start their threads: the step's buffers stay in
    # one heap of the process instead of being faulted in anew, zeroed, every step.
    keep_freed_memory(one_heap=True)
    from configs import parse_config_args
    from configs.demo import EVAL_IMAGES, EVAL_MIN_AREA, SCENE, TRAIN_IMAGES, set_steps

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(x == "--config" or x.startswith("--config=") or x == "-c" for x in argv):
        argv = ["--config", "configs/demo.py"] + argv
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/sam_jax_demo")
    p.add_argument("--steps", type=int, default=None, help="default: the config's train.num_steps")
    p.add_argument("--train-images", type=int, default=None, help="default: configs.demo.TRAIN_IMAGES")
    p.add_argument("--eval-images", type=int, default=EVAL_IMAGES)
    p.add_argument("--proposals", action="store_true", help="also proposal AR@100 (AMG, 16x16 grid)")
    p.add_argument("--fresh", action="store_true")
    a, c = parse_config_args(p, argv)
    a.steps = c.train.num_steps if a.steps is None else a.steps
    a.train_images = TRAIN_IMAGES if a.train_images is None else a.train_images
    t0, cpu0 = time.time(), time.process_time()
    if a.steps < 1 or a.train_images < 1 or a.eval_images < 1:
        p.error("--steps, --train-images and --eval-images must be >= 1")
    if a.fresh and os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out, exist_ok=True)

    from data.synthetic import write_shards

    _quiet_absl()
    import jax.numpy as jnp

    from sam_jax import SamModel
    from train.loop import make_trainer, run
    from train.train_step import build_module

    train_dir, eval_dir = os.path.join(a.out, "shards_train"), os.path.join(a.out, "shards_eval")
    c.train.workdir = os.path.join(a.out, "run")
    set_steps(c, a.steps)
    c.data.train_dir, c.data.eval_dir = train_dir, eval_dir
    # The train step compiles while the shards are written (in spawned processes): 82 s
    # for both, against about 90 s one after the other (2026-12-02; the compile keeps
    # both cores partly busy itself).
    with ThreadPoolExecutor(1) as background:
        trainer = background.submit(make_trainer, c, precompile=True)
        for d, n, seed in ((train_dir, a.train_images, 0), (eval_dir, a.eval_images, 12345)):
            if not os.path.isdir(d):
                write_shards(
                    d + ".tmp", n, images_per_shard=32, seed=seed, workers=os.cpu_count() or 1, **SCENE
                )
                os.replace(d + ".tmp", d)
        print(
            f"[demo] synthetic shards: {train_dir} ({a.train_images} images), {eval_dir} "
            f"({a.eval_images} held-out) [{time.time() - t0:.0f}s]",
            flush=True,
        )
        trainer = trainer.result()
    print(f"[demo] train step compiled [{time.time() - t0:.0f}s]", flush=True)
    summary = run(c, trainer=trainer)
    t_train = time.time() - t0
    model = SamModel(module=build_module(c).clone(dtype=jnp.float32), params=summary["state"].params)
    print("[demo] evaluating on the held-out scenes (point protocol, 1/3/5 clicks)", flush=True)
    held = points_eval(model, eval_dir, a.out, EVAL_MIN_AREA)
    if a.proposals:
        held.update(proposals_eval(model, eval_dir, a.out))
    curves = plot_curves(
        os.path.join(c.train.workdir, "metrics.jsonl"),
        os.path.join(a.out, "curves.png"),
        {"1 click": held["miou_1click_most_confident"], "5 clicks": held["miou_5click"]},
        c.loss.focal_weight,
    )
    pictures = click_pictures(model, eval_dir, os.path.join(a.out, "clicks"), EVAL_MIN_AREA)
    losses, last = summary["losses"], summary["last_metrics"]
    result = dict(
        steps=summary["end_step"],
        first_loss=losses.get(1),
        last_loss=losses.get(summary["end_step"]),
        train_miou_first_pass=round(last.get("miou_first", float("nan")), 4),
        train_miou_last_pass=round(last.get("miou_last", float("nan")), 4),
        **held,
        seconds=round(time.time() - t0, 1),
        train_seconds=round(t_train, 1),
        cpu_seconds=round(time.process_time() - cpu0, 1),
    )
    print("[demo] result: " + json.dumps(result), flush=True)
    print(f"[demo] checkpoints:  {c.train.workdir}/checkpoints")
    print(f"[demo] metrics:      {c.train.workdir}/metrics.jsonl, TensorBoard: {c.train.workdir}/tb")
    print(f"[demo] curves:       {curves}")
    print(f"[demo] click pictures: {os.path.join(a.out, 'clicks')} ({len(pictures)} PNGs)")
    print(f"[demo] point protocol: {os.path.join(a.out, 'eval_points')} (results.json, results.md, plots)")
    print(
        f"[demo] evaluate any checkpoint: python -m sam_jax.cli eval points {eval_dir} "
        f"--checkpoint {c.train.workdir} --train-config configs/demo.py --min-area {EVAL_MIN_AREA} --out DIR"
    )
    from sam_jax.atomic_io import write_json

    write_json(os.path.join(a.out, "result.json"), result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
