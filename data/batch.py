"""The training batch format, declared once (SAM paper section 3 and appendix A:
one image, K ground-truth masks with one foreground point and one box each).

Every field's dtype and per-sample shape, in the symbols ``S`` (model input side),
``R`` (target side: the model's low-res mask side ``S/4``, or a multiple of it set by
``data.target_size``; :func:`majority_cells` reduces finer targets) and ``K`` (masks
per image); a batch adds the leading ``B``. The SA-1B pipeline (:mod:`data.pipeline`), the in-memory synthetic
batches (:mod:`data.synthetic_batch`) and the train step's shardings all read
this table::

    image        (B, S, S, 3) float32  normalised, zero-padded bottom/right
    masks        (B, K, R, R) uint8    0/1 targets in the padded square frame
    mask_valid   (B, K)       bool     False for padding masks / skipped slots
    boxes        (B, K, 4)    float32  XYXY, resized-image pixel coordinates
    points       (B, K, 2)    float32  (x, y), one foreground point per mask
    resized_hw   (B, 2)       int32    image size inside the padded square
    original_hw  (B, 2)       int32    source image size
    image_id     (B,)         int64    image id (-1 for skipped slots)

:data:`DEVICE_KEYS` are the fields the train step reads; the others stay on the host.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FIELDS",
    "DEVICE_KEYS",
    "sample_shape",
    "batch_rank",
    "empty_sample",
    "empty_batch",
    "majority_cells",
]

FIELDS: dict[str, tuple[type, tuple]] = {
    "image": (np.float32, ("S", "S", 3)),
    "masks": (np.uint8, ("K", "R", "R")),
    "mask_valid": (np.bool_, ("K",)),
    "boxes": (np.float32, ("K", 4)),
    "points": (np.float32, ("K", 2)),
    "resized_hw": (np.int32, (2,)),
    "original_hw": (np.int32, (2,)),
    "image_id": (np.int64, ()),
}
DEVICE_KEYS = ("image", "masks", "mask_valid", "boxes", "points", "resized_hw")


def sample_shape(key: str, model_size: int, target_size: int, max_masks: int) -> tuple[int, ...]:
    """The shape of one sample's ``key`` for ``S = model_size``, ``R = target_size``, ``K = max_masks``."""
    sizes = {"S": model_size, "R": target_size, "K": max_masks}
    return tuple(sizes.get(d, d) for d in FIELDS[key][1])


def batch_rank(key: str) -> int:
    """Rank of ``key`` in a batch (the leading ``B`` included)."""
    return len(FIELDS[key][1]) + 1


def empty_sample(model_size: int, target_size: int, max_masks: int) -> dict[str, np.ndarray]:
    """All-zero sample with the static shapes (``image_id`` -1: no image)."""
    out = {
        k: np.zeros(sample_shape(k, model_size, target_size, max_masks), dtype)
        for k, (dtype, _) in FIELDS.items()
    }
    out["image_id"][...] = -1
    return out


def empty_batch(batch_size: int, model_size: int, target_size: int, max_masks: int) -> dict[str, np.ndarray]:
    """All-zero batch of ``batch_size`` samples (``image_id`` -1)."""
    return {
        k: np.repeat(v[None], batch_size, axis=0)
        for k, v in empty_sample(model_size, target_size, max_masks).items()
    }


def majority_cells(masks, r: int):
    """``(..., T, T)`` 0/1 masks -> ``(..., R, R)`` bool: a cell is foreground where at
    least half of the ``(T/R)^2`` pixels it covers are. ``T`` is a multiple of ``R``;
    numpy or jax arrays (the synthetic batches and the train step share it)."""
    f = masks.shape[-1] // r
    cells = masks.reshape(masks.shape[:-2] + (r, f, r, f)).astype("float32").mean(axis=(-3, -1))
    return cells >= 0.5
