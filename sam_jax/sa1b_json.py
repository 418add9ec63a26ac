"""Writing the SA-1B annotation format (Kirillov et al. 2023, section 5).

One JSON file per image::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": "<COCO RLE>"},
                      "bbox": [x, y, w, h], "area", "predicted_iou", "stability_score",
                      "crop_box": [x, y, w, h], "point_coords": [[x, y]]}, ...]}

``sa1b_record`` turns the records of the automatic mask generator (``coco_rle``
output) into that document; ``mask_record`` builds one annotation from a binary
mask (written atomically with ``sam_jax.atomic_io.write_json``). The readers are
in ``data/sa1b.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def sa1b_record(records: list[dict], file_name: str, image_id: int, shape: Sequence[int]) -> dict:
    """The SA-1B document of one image from mask records with COCO-RLE ``segmentation``.

    Args:
      records: dicts with the keys of ``SamAutomaticMaskGenerator.generate`` (``coco_rle``).
      file_name: the image's file name; image_id: its integer id; shape: ``(H, W, ...)``.
    """
    return {
        "image": {
            "image_id": int(image_id),
            "width": int(shape[1]),
            "height": int(shape[0]),
            "file_name": file_name,
        },
        "annotations": [
            {
                "id": i,
                "segmentation": r["segmentation"],
                "bbox": [float(v) for v in r["bbox"]],
                "area": int(r["area"]),
                "predicted_iou": float(r["predicted_iou"]),
                "stability_score": float(r["stability_score"]),
                "crop_box": [float(v) for v in r["crop_box"]],
                "point_coords": [[float(v) for v in p] for p in r["point_coords"]],
            }
            for i, r in enumerate(records)
        ],
    }


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``(H, W)`` bool -> COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(segmentation: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE (``counts`` as str) -> ``(H, W)`` bool."""
    from pycocotools import mask as mask_utils

    counts = segmentation["counts"]
    rle = {
        "size": list(segmentation["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return mask_utils.decode(rle).astype(bool)


def mask_record(
    mask: np.ndarray, *, point_coords: Sequence[Sequence[float]], predicted_iou: float, stability_score: float
) -> dict[str, Any]:
    """One SA-1B annotation (without ``id``) of an ``(H, W)`` bool mask; the crop box is
    the whole image (interactive masks are predicted on the full image)."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    bbox = (
        [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        if xs.size
        else [0.0, 0.0, 0.0, 0.0]
    )
    return {
        "segmentation": encode_mask(mask),
        "bbox": bbox,
        "area": int(xs.size),
        "predicted_iou": float(predicted_iou),
        "stability_score": float(stability_score),
        "crop_box": [0.0, 0.0, float(w), float(h)],
        "point_coords": [[float(v) for v in p] for p in point_coords],
    }


__all__ = ["decode_mask", "encode_mask", "mask_record", "sa1b_record"]
