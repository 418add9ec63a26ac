"""Pictures of masks and prompts drawn over an image (PIL, numpy).

``overlay(image, masks, points, labels, boxes)`` returns an ``(H, W, 3)`` uint8
picture: each mask alpha-blended in its own colour with a 1-pixel outline,
foreground points as green discs and background points as red discs (white
rim), boxes as rectangles. ``save_overlay`` writes it as PNG.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

FOREGROUND = (0, 200, 0)
BACKGROUND = (220, 0, 0)
BOX_COLOUR = (30, 144, 255)


def mask_colours(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` uint8 distinct, saturated colours (golden-ratio hue steps)."""
    hues = (seed * 0.13 + np.arange(n) * 0.618033988749895) % 1.0
    return np.array(
        [[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], np.uint8
    ).reshape(n, 3)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    p = np.pad(mask, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def overlay(
    image: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray] | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
    point_radius: int | None = None,
) -> np.ndarray:
    """Draw masks ``(M, H, W)`` bool, points ``(N, 2)`` XY with labels ``(N,)`` (1 fg,
    0 bg; all fg when None) and boxes ``(K, 4)`` XYXY over ``image`` ``(H, W, 3)`` uint8.

    Masks are drawn largest first so small ones stay visible.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape[:2]
    out = image[..., :3].astype(np.float32)
    if masks is not None and len(masks):
        masks = np.asarray(masks, bool)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.shape[1:] != (h, w):
            raise ValueError(f"masks must have shape (M, {h}, {w}), got {masks.shape}")
        colours = mask_colours(len(masks)).astype(np.float32)
        for i in np.argsort([-m.sum() for m in masks], kind="stable"):
            m = masks[i]
            out[m] = (1 - alpha) * out[m] + alpha * colours[i]
            out[_outline(m)] = colours[i]
    picture = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    if boxes is not None:
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
            draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=max(2, min(h, w) // 200))
    if points is not None:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        labels = np.ones(len(points), int) if labels is None else np.asarray(labels).reshape(-1)
        if len(labels) != len(points):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        r = point_radius or max(3, min(h, w) // 80)
        for (x, y), lab in zip(points, labels):
            colour = FOREGROUND if lab == 1 else BACKGROUND
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
    return np.asarray(picture)


def save_overlay(path: str | os.PathLike, image: np.ndarray, **kwargs) -> np.ndarray:
    """:func:`overlay` written to ``path`` as PNG; returns the picture."""
    picture = overlay(image, **kwargs)
    Image.fromarray(picture).save(path, format="PNG")
    return picture


__all__ = ["overlay", "save_overlay", "mask_colours", "FOREGROUND", "BACKGROUND", "BOX_COLOUR"]
