"""Building blocks of automatic mask generation (paper section 4, fully automatic stage; Appendix B).

Host-side helpers (numpy): point grids, crop boxes, run-length encoding,
un-cropping, small-region cleanup. Device-side helpers (``jax.numpy``, jit-able
with static shapes): stability score, mask -> box, greedy box NMS.

Conventions: boxes are XYXY, ``(N, 4)``; a mask's box uses inclusive maxima
(``x1`` is the last column holding the mask) and an empty mask has the box
``[0, 0, 0, 0]``. Uncompressed RLE is ``{"size": [h, w], "counts": [...]}`` with
column-major (Fortran) runs that start with a run of zeros (possibly empty),
the layout pycocotools expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- grids & crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` XY points in ``[0, 1]``, cell centres of an ``n x n`` grid, x fastest."""
    if n_per_side < 1:
        raise ValueError(f"points per side must be >= 1, got {n_per_side}")
    side = np.linspace(0.5 / n_per_side, 1.0 - 0.5 / n_per_side, n_per_side)
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer ``i`` has ``int(n_per_side / scale**i)`` points a side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY ints) of every layer, and each box's layer index.

    Layer 0 is the whole image; layer ``k >= 1`` tiles the image with
    ``2^k x 2^k`` overlapping crops (x-major order, as the reference).
    """
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    short_side = min(im_h, im_w)
    for k in range(1, n_layers + 1):
        n = 2**k
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        for i in range(n):
            for j in range(n):
                x0, y0 = int((crop_w - overlap) * i), int((crop_h - overlap) * j)
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(k)
    return boxes, layers


def batch_iterator(batch_size: int, n: int) -> Iterator[slice]:
    """Slices ``[0:b], [b:2b], ...`` covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def box_xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` XYXY -> XYWH."""
    boxes = np.array(boxes, copy=True)
    boxes[..., 2:] -= boxes[..., :2]
    return boxes


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """``(N, 4)`` boxes in a crop's frame -> the image frame."""
    x0, y0 = crop_box[:2]
    return boxes + np.array([x0, y0, x0, y0], dtype=boxes.dtype)


def uncrop_points(points: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """``(N, 2)`` XY points in a crop's frame -> the image frame."""
    return points + np.array(crop_box[:2], dtype=points.dtype)


def uncrop_masks(masks: np.ndarray, crop_box: Sequence[int], orig_h: int, orig_w: int) -> np.ndarray:
    """``(N, h, w)`` crop masks -> ``(N, orig_h, orig_w)``, zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    return np.pad(masks, ((0, 0), (y0, orig_h - y1), (x0, orig_w - x1)))


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> np.ndarray:
    """``(N,)`` bool: the (crop-frame) box lies within ``atol`` of a crop edge that
    is not also an image edge."""
    boxes = uncrop_boxes_xyxy(boxes, crop_box).astype(np.float32)
    near_crop = np.abs(boxes - np.asarray(crop_box, np.float32)) <= atol
    near_image = np.abs(boxes - np.asarray(orig_box, np.float32)) <= atol
    return np.any(near_crop & ~near_image, axis=1)


# ----------------------------------------------------------------------------- device ops


def calculate_stability_score(
    logits: jax.Array, mask_threshold: float, offset: float | jax.Array
) -> jax.Array:
    """IoU of the masks thresholded at ``t + offset`` and ``t - offset``.

    ``(..., H, W)`` logits -> ``(...)`` float32 (NaN for an empty low mask). The
    high mask lies inside the low one, so the IoU is a ratio of pixel counts.
    """
    inter = jnp.sum(logits > mask_threshold + offset, axis=(-2, -1), dtype=jnp.int32)
    union = jnp.sum(logits > mask_threshold - offset, axis=(-2, -1), dtype=jnp.int32)
    return inter.astype(jnp.float32) / union.astype(jnp.float32)


def batched_mask_to_box(masks: jax.Array) -> jax.Array:
    """``(..., H, W)`` bool masks -> ``(..., 4)`` int32 XYXY boxes, inclusive maxima;
    ``[0, 0, 0, 0]`` for an empty mask."""
    h, w = masks.shape[-2:]
    rows = jnp.any(masks, axis=-1)  # (..., H)
    cols = jnp.any(masks, axis=-2)  # (..., W)
    ys, xs = jnp.arange(h, dtype=jnp.int32), jnp.arange(w, dtype=jnp.int32)
    y0 = jnp.min(jnp.where(rows, ys, h), axis=-1)
    y1 = jnp.max(jnp.where(rows, ys, -1), axis=-1)
    x0 = jnp.min(jnp.where(cols, xs, w), axis=-1)
    x1 = jnp.max(jnp.where(cols, xs, -1), axis=-1)
    boxes = jnp.stack([x0, y0, x1, y1], axis=-1)
    return jnp.where(jnp.any(rows, axis=-1)[..., None], boxes, 0)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` XYXY -> ``(N,)`` areas ``(x1 - x0) * (y1 - y0)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@jax.jit
def _nms_sorted(
    boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS on padded arrays; returns (order, keep-in-that-order)."""
    n = boxes.shape[0]
    # Stable descending sort with the invalid rows last.
    key = jnp.where(valid, -scores, jnp.inf)
    order = jnp.argsort(key, stable=True)
    b = boxes[order].astype(jnp.float32)
    v = valid[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    index = jnp.arange(n)

    def suppress(i, keep):
        # One row of the IoU matrix at a time: O(N) memory, so 16k proposals fit.
        lt = jnp.maximum(b[i, :2], b[:, :2])
        rb = jnp.minimum(b[i, 2:], b[:, 2:])
        wh = jnp.maximum(rb - lt, 0.0)
        inter = wh[:, 0] * wh[:, 1]
        over = inter / (area[i] + area - inter) > iou_threshold  # NaN -> False
        return keep & ~(over & (index > i))

    def body(i, keep):
        return jax.lax.cond(keep[i], suppress, lambda _, k: k, i, keep)

    keep = jax.lax.fori_loop(0, n, body, v)
    return order, keep


def bucket_size(n: int, minimum: int = 1) -> int:
    """The smallest power of two ``>= max(n, minimum)``."""
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision ``nms`` semantics) on the device.

    Boxes ``(N, 4)`` XYXY are visited by score, highest first (ties in input
    order); a box is dropped when its IoU with an already kept box is
    ``> iou_threshold``. Returns the kept indices ``(K,)`` in visiting order.
    Inputs are padded to a power of two so few sizes are compiled.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    n = len(boxes)
    if n != len(scores):
        raise ValueError(f"{n} boxes but {len(scores)} scores")
    if n == 0:
        return np.zeros((0,), np.int64)
    m = bucket_size(n, 64)
    pb = np.zeros((m, 4), np.float32)
    pb[:n] = boxes
    ps = np.zeros((m,), np.float32)
    ps[:n] = scores
    order, keep = _nms_sorted(pb, ps, np.arange(m) < n, np.float32(iou_threshold))
    order, keep = np.asarray(order), np.asarray(keep)
    return order[keep].astype(np.int64)


# ----------------------------------------------------------------------------- RLE


def mask_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool -> N uncompressed RLEs (column-major, zero run first)."""
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(n, h * w)
    out = []
    for row in flat:
        change = np.flatnonzero(row[1:] != row[:-1]) + 1
        bounds = np.concatenate([[0], change, [h * w]])
        counts = np.diff(bounds).tolist()
        if row.size and row[0]:
            counts = [0] + counts
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> ``(H, W)`` bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO compressed RLE with a JSON-ready ``str`` counts."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out


# ----------------------------------------------------------------------------- cleanup

_EIGHT_CONNECTED = np.ones((3, 3), bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or remove islands (``"islands"``) smaller than
    ``area_thresh`` pixels (8-connectivity). Returns ``(mask, changed)``.

    As in the reference, a "hole" is any connected region of background,
    including one touching the border; when every island is small the largest
    one is kept.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = ~mask if holes else mask
    labels, n = ndimage.label(working, structure=_EIGHT_CONNECTED)
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if holes:
        fill = np.concatenate([[True], small])  # mask pixels (label 0) and small holes
    else:
        fill = np.concatenate([[False], ~small])
        if not fill.any():
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[labels], True


__all__ = [
    "build_point_grid",
    "build_all_layer_point_grids",
    "generate_crop_boxes",
    "batch_iterator",
    "box_xyxy_to_xywh",
    "uncrop_boxes_xyxy",
    "uncrop_points",
    "uncrop_masks",
    "is_box_near_crop_edge",
    "calculate_stability_score",
    "batched_mask_to_box",
    "box_area",
    "bucket_size",
    "box_nms",
    "mask_to_rle",
    "rle_to_mask",
    "area_from_rle",
    "coco_encode_rle",
    "remove_small_regions",
]
