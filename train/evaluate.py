"""Single-point mIoU of a trained checkpoint (and overlay PNGs).

For every valid GT mask: one foreground point (the batch's ``points``, uniform in
the mask), multimask output, the mask with the highest predicted IoU; IoU of
``logits > 0`` with the GT at the low-res target resolution ``R``. mIoU = mean
over masks (masks with fewer than ``loss.min_target_cells`` target cells at ``R``
are skipped, as in training).

Run::

    python -m train.evaluate --config configs/tiny.py --workdir /tmp/run \
        [--data DIR_WITH_SHARDS | --synthetic-batches 4] [--overlays OUT_DIR] \
        [--config.key=value ...]

(``--workdir`` holds ``checkpoints/`` written by ``python -m train``; with no
``--data`` the config's ``data.eval_dir`` is used, else in-memory synthetic
batches with seeds disjoint from training.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.geometry import PIXEL_MEAN, PIXEL_STD
from sam_jax.modeling.sam import Sam
from sam_jax.sam_model import SamModel
from train.losses import mask_iou


def best_single_point_logits(model: SamModel, image, points) -> jax.Array:
    """``image (B,S,S,3)`` preprocessed, ``points (B,K,2)`` -> the multimask output with the
    highest predicted IoU per point, low-res logits ``(B,K,R,R)`` float32 (inference core)."""
    b, k = points.shape[:2]
    emb = jnp.repeat(model.embed_images(image), k, axis=0)
    logits, iou = model.decode(
        emb, jnp.reshape(points, (b * k, 1, 2)), jnp.ones((b * k, 1), jnp.int32), multimask_output=True
    )
    best = jnp.argmax(iou, axis=1)
    out = jnp.take_along_axis(logits, best[:, None, None, None], 1)[:, 0]
    return out.reshape((b, k) + out.shape[-2:]).astype(jnp.float32)


def single_point_miou(
    module: Sam,
    params,
    batches: Iterable[dict],
    overlay_dir: str | None = None,
    max_overlays: int = 8,
    min_cells: int = 1,
) -> dict:
    """``{"miou": float, "num_masks": int, "overlays": [paths]}`` over ``batches``."""
    model = SamModel(module, params)
    ious, paths = [], []
    for batch in batches:
        logits = np.asarray(
            best_single_point_logits(model, jnp.asarray(batch["image"]), jnp.asarray(batch["points"]))
        )
        iou = np.asarray(mask_iou(logits, batch["masks"]))
        valid = _valid(batch, min_cells)
        ious.append(iou[valid])
        if overlay_dir and len(paths) < max_overlays:
            paths += write_overlays(
                overlay_dir, batch, logits, valid, max_overlays - len(paths), start=len(paths)
            )
    ious = np.concatenate(ious) if ious else np.zeros((0,))
    return dict(
        miou=float(ious.mean()) if len(ious) else float("nan"), num_masks=int(len(ious)), overlays=paths
    )


def _valid(batch: dict, min_cells: int) -> np.ndarray:
    cells = np.asarray(batch["masks"]).sum(axis=(2, 3))
    return np.asarray(batch["mask_valid"], bool) & (cells >= max(min_cells, 1))


def write_overlays(
    out_dir: str, batch: dict, logits: np.ndarray, valid: np.ndarray, limit: int, start: int = 0
):
    """One PNG per image: predicted masks (upsampled to ``S``) and their prompt points."""
    from sam_jax.visualize import save_overlay

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    s = batch["image"].shape[1]
    for i in range(len(batch["image"])):
        if len(paths) == limit:
            break
        if not np.all(np.asarray(batch["resized_hw"][i]) > 0):
            continue  # a skipped record or a padding slot: no image
        img = batch["image"][i] * np.asarray(PIXEL_STD) + np.asarray(PIXEL_MEAN)
        img = np.clip(img, 0, 255).astype(np.uint8)
        f = s // logits.shape[-1]
        masks = np.repeat(np.repeat(logits[i][valid[i]] > 0, f, axis=1), f, axis=2)
        h, w = (int(v) for v in batch["resized_hw"][i])
        path = os.path.join(out_dir, f"pred_{start + len(paths):03d}.png")
        save_overlay(path, img[:h, :w], masks=masks[:, :h, :w], points=batch["points"][i][valid[i]])
        paths.append(path)
    return paths


def eval_batches(
    config, image_size: int, data_dir: str = "", synthetic_batches: int = 4, batch_size: int = 4
):
    """Held-out batches: SA-1B shards in ``data_dir`` (one pass) or in-memory synthetic ones
    (seeds from 10**6 on, disjoint from training's)."""
    if data_dir:
        from data.pipeline import Pipeline
        from train.loop import shard_pattern

        return iter(
            Pipeline(
                shard_pattern(data_dir),
                batch_size=batch_size,
                seed=0,
                model_size=image_size,
                max_masks=config.data.masks_per_image,
                num_epochs=1,
                shuffle=False,
                process_index=0,
                process_count=1,
            )
        )
    from data.synthetic_batch import make_batch

    return (
        make_batch(10**6 + i, batch_size, config.data.masks_per_image, image_size)
        for i in range(synthetic_batches)
    )


def restore_params(config, workdir: str):
    """The params of the newest readable checkpoint in ``<workdir>/checkpoints`` (single
    process; read-only). Raises ``CheckpointMismatchError`` if it does not fit ``config``'s
    model, ``FileNotFoundError`` if there is none."""
    from train.checkpointing import Checkpointer
    from train.sharding import make_mesh
    from train.train_step import Trainer

    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    trainer = Trainer(config, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
    # read-only: evaluation never renames or deletes anything in the workdir
    ckpt = Checkpointer(directory, keep=1000, async_save=False, read_only=True)
    state = ckpt.restore_latest(trainer.abstract_state)
    ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    return trainer.module.clone(dtype=jnp.float32), state.params, int(state.step)


def main(argv=None) -> int:
    from configs import parse_config_args

    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", default="")
    p.add_argument("--synthetic-batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--overlays", default="")
    args, config = parse_config_args(p, sys.argv[1:] if argv is None else argv)
    try:
        module, params, step = restore_params(config, args.workdir)
    except (ValueError, FileNotFoundError) as e:  # no checkpoint, or one of another model
        raise SystemExit(f"error: {e}") from None
    batches = eval_batches(
        config,
        module.config.image_size,
        args.data or config.data.eval_dir,
        args.synthetic_batches,
        args.batch_size,
    )
    res = single_point_miou(
        module, params, batches, args.overlays or None, min_cells=config.loss.min_target_cells
    )
    print(json.dumps(dict(res, step=step)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
