"""In-memory synthetic batches in the format of :mod:`data.batch` (numpy only).

``make_batch(seed, batch_size, masks_per_image, image_size)`` returns the numpy dict
of :mod:`data.batch`: images of a few random
ellipses/rectangles on a noisy background, the GT masks of those shapes at
``R = S/4`` (or ``target_size``), their boxes and one uniform foreground point per mask. Deterministic
in ``seed``. Used by tests, ``benchmarks.gpu_check`` and ``data.synthetic=True`` training.
"""

from __future__ import annotations

import numpy as np

from data.batch import empty_batch, majority_cells
from sam_jax.geometry import normalize


def _shape_mask(rng, s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cx, cy = rng.uniform(0.15 * s, 0.85 * s, 2)
    a, b = rng.uniform(0.06 * s, 0.25 * s, 2)
    if rng.random() < 0.5:
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    return (np.abs(xx - cx) <= a) & (np.abs(yy - cy) <= b)


def make_image(rng: np.random.Generator, image_size: int, num_masks: int):
    """One image ``(S, S, 3)`` uint8-valued float32 and its visible masks ``(num_masks, S, S)``."""
    s = image_size
    img = rng.normal(110, 20, (s, s, 3)).astype(np.float32)
    owner = np.full((s, s), -1, np.int32)
    for m in range(num_masks):
        shape = _shape_mask(rng, s)
        owner[shape] = m
        img[shape] = rng.uniform(0, 255, 3) + rng.normal(0, 10, (shape.sum(), 3))
    masks = owner[None] == np.arange(num_masks)[:, None, None]
    return np.clip(img, 0, 255), masks


def make_batch(
    seed: int,
    batch_size: int,
    masks_per_image: int,
    image_size: int,
    num_valid: int | None = None,
    target_size: int | None = None,
) -> dict[str, np.ndarray]:
    """A batch of the data pipeline's format; masks beyond ``num_valid`` are padding.
    Targets are ``target_size`` (default ``S/4``, a divisor of ``S``) square: a target
    pixel is foreground where most of the ``S/R`` x ``S/R`` pixels it covers are."""
    rng = np.random.default_rng(seed)
    s, r, k = image_size, target_size or image_size // 4, masks_per_image
    if s % r:
        raise ValueError(f"target_size ({r}) must divide image_size ({s})")
    out = empty_batch(batch_size, s, r, k)
    out["resized_hw"][:] = out["original_hw"][:] = s
    out["image_id"][:] = [(seed * batch_size + i) % 2**63 for i in range(batch_size)]
    nv = k if num_valid is None else num_valid
    for i in range(batch_size):
        img, masks = make_image(rng, s, k)
        out["image"][i] = normalize(img)
        for j in range(min(nv, k)):
            m = masks[j]
            if m.sum() < 16:
                continue
            ys, xs = np.nonzero(m)
            out["masks"][i, j] = majority_cells(m, r)
            if not out["masks"][i, j].any():
                continue
            out["mask_valid"][i, j] = True
            out["boxes"][i, j] = (xs.min(), ys.min(), xs.max(), ys.max())
            t = rng.integers(len(xs))
            out["points"][i, j] = (xs[t], ys[t])
    return out
