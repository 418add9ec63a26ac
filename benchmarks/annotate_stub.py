"""A model whose answers are known, for the annotation tool's tests.

``synthetic_scene`` draws flat-coloured objects on a grey, noisy background;
``StubPredictor`` (the ``SamPredictor`` API) answers a click with the object under
it, so a test can check the saved mask against the ground truth; ``StubGenerator``
(the ``SamAutomaticMaskGenerator.generate`` API, ``coco_rle`` output) proposes
some of the objects, as the prefill would.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sam_jax.sa1b_json import mask_record

LOW_RES = 256


def synthetic_scene(h: int = 150, w: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3)`` uint8 image and ``(H, W)`` int labels: 0 background, 1 a rectangle,
    2 a disk, 3 a bar. The background is grey (r == g == b); objects are saturated."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(60, 160, (h, w), dtype=np.uint8)
    image = np.repeat(grey[..., None], 3, axis=-1)
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int32)
    labels[int(0.2 * h) : int(0.6 * h), int(0.1 * w) : int(0.35 * w)] = 1
    labels[(yy - 0.4 * h) ** 2 + (xx - 0.65 * w) ** 2 <= (0.17 * h) ** 2] = 2
    labels[int(0.72 * h) : int(0.9 * h), int(0.45 * w) : int(0.9 * w)] = 3
    colours = {1: (220, 40, 40), 2: (40, 80, 220), 3: (40, 200, 60)}
    for k, c in colours.items():
        image[labels == k] = c
    return image, labels


def components(image: np.ndarray) -> np.ndarray:
    """Labels of the coloured (non-grey) connected regions of ``image``."""
    image = np.asarray(image)
    coloured = (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])
    return ndimage.label(coloured)[0]


class StubPredictor:
    """``SamPredictor`` API: the mask is the union of the objects under the foreground
    points minus those under the background points (with only a box: the object
    most inside it). Records what it was given."""

    set_image_calls = 0

    def __init__(self) -> None:
        self.labels = None
        self.calls: list[dict] = []
        self.last_low_res = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        type(self).set_image_calls += 1
        self.labels = components(image)

    def get_image_embedding(self) -> np.ndarray:
        return np.zeros((1, 8, 8, 8), np.float32)  # 2 KiB: the cache tests count these

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        lab = self.labels
        h, w = lab.shape
        self.calls.append(
            {
                "points": None if point_coords is None else np.array(point_coords),
                "labels": None if point_labels is None else np.array(point_labels),
                "box": None if box is None else np.array(box),
                "mask_input": None if mask_input is None else np.array(mask_input),
                "multimask": multimask_output,
            }
        )
        mask = np.zeros((h, w), bool)
        if point_coords is not None:
            for (x, y), fg in zip(np.asarray(point_coords), np.asarray(point_labels)):
                k = lab[min(int(y), h - 1), min(int(x), w - 1)]
                if k:
                    mask = (mask | (lab == k)) if fg else (mask & (lab != k))
        elif box is not None:
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            inside = lab[y0 : y1 + 1, x0 : x1 + 1]
            ks, n = np.unique(inside[inside > 0], return_counts=True)
            if len(ks):
                mask = lab == ks[np.argmax(n)]
        c = 3 if multimask_output else 1
        logits = np.where(mask, 10.0, -10.0).astype(np.float32)
        ys = (np.arange(LOW_RES) * h / LOW_RES).astype(int)
        xs = (np.arange(LOW_RES) * w / LOW_RES).astype(int)
        low = np.repeat(logits[ys][:, xs][None], c, axis=0) + np.arange(c)[:, None, None]
        self.last_low_res = low
        iou = np.array([0.8, 0.97, 0.9][:c] if c == 3 else [0.95], np.float32)
        masks = np.repeat(logits[None], c, axis=0)
        return (masks if return_logits else masks > 0), iou, low


class StubGenerator:
    """``SamAutomaticMaskGenerator.generate`` (``coco_rle``): the objects whose label is in
    ``keep`` (labels as :func:`components` numbers them)."""

    def __init__(self, keep: tuple[int, ...]) -> None:
        self.keep = keep
        self.calls = 0

    def generate(self, image: np.ndarray) -> list[dict]:
        self.calls += 1
        lab = components(image)
        out = []
        for k in self.keep:
            m = lab == k
            ys, xs = np.nonzero(m)
            out.append(
                mask_record(
                    m,
                    point_coords=[[float(xs.mean()), float(ys.mean())]],
                    predicted_iou=0.96,
                    stability_score=0.98,
                )
            )
        return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))
