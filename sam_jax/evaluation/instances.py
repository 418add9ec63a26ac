"""Zero-shot instance segmentation from boxes (paper section 7.4, appendix D.4).

Each detector box (a COCO results JSON: ``image_id``, ``bbox`` XYWH,
``score``, ``category_id``; or the ground-truth boxes with score 1) prompts the
model with multimask output; the most confident mask's low-res logits are then
fed back together with the same box for one refinement pass (single-mask
output), whose mask is the result. The box keeps its detector score and
category. Masks are scored with COCO segm AP (pycocotools ``COCOeval``,
categories used): AP, AP50, AP75, AP small/medium/large.

All boxes of an image are decoded together, ``boxes_per_batch`` rows per call
(the last call padded), so every image reuses one compiled decoder.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InstanceSettings:
    """Settings of the box-prompt protocol.

    Attributes:
      detections: path of a COCO results JSON with boxes; None = ground-truth boxes.
      boxes_per_batch: rows decoded per call.
      refine: run the refinement pass (the paper does).
      max_per_image: keep the highest-scoring boxes of an image (COCO's 100).
    """

    detections: str | None = None
    boxes_per_batch: int = 16
    refine: bool = True
    max_per_image: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


def box_prompts_to_masks(
    predictor: Any, image: np.ndarray, boxes_xyxy: np.ndarray, batch: int, refine: bool = True
) -> np.ndarray:
    """``(B, 4)`` XYXY boxes in image pixels -> ``(B, H, W)`` bool masks (module doc)."""
    n = len(boxes_xyxy)
    h, w = image.shape[:2]
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    predictor.set_image(image)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        rows = np.concatenate([np.arange(start, start + m), np.full(batch - m, start + m - 1)])
        boxes = predictor.transform.apply_boxes(boxes_xyxy[rows], predictor.original_size)
        masks, scores, low = predictor.predict_batch(None, None, boxes=boxes, multimask_output=True)
        best = np.argmax(scores, axis=1)
        r = np.arange(batch)
        result = masks[r, best]
        if refine:
            masks, _, _ = predictor.predict_batch(
                None, None, boxes=boxes, mask_input=low[r, best][:, None], multimask_output=False
            )
            result = masks[:, 0]
        out[start : start + m] = result[:m]
    return out


def _to_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def segm_ap(gt: dict, results: list[dict]) -> dict:
    """COCO segm AP of ``results`` against the COCO dict ``gt`` (pycocotools)."""
    from pycocotools.cocoeval import COCOeval

    from sam_jax.evaluation.proposals import _coco, fresh_results

    names = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
    if not results:
        return {k: 0.0 for k in names}
    coco_gt = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(fresh_results(results))
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(names, ev.stats[:6])}


class InstancesProtocol:
    """The box-prompt protocol for :func:`sam_jax.evaluation.evaluate`."""

    name = "instances"

    def __init__(self, settings: InstanceSettings | None = None) -> None:
        self.settings = settings or InstanceSettings()
        self.predictor: Any = None
        self._dets: dict[int, list[dict]] | None = None
        if self.settings.detections is not None:
            try:
                with open(self.settings.detections) as f:
                    dets = json.load(f)
                self._dets = {}
                for d in dets:
                    self._dets.setdefault(int(d["image_id"]), []).append(
                        {
                            "bbox": [float(v) for v in d["bbox"]],
                            "score": float(d.get("score", 1.0)),
                            "category_id": int(d.get("category_id", 1)),
                        }
                    )
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{self.settings.detections} is not a COCO results JSON with boxes: {e}"
                ) from None

    def setup(self, model: Any) -> None:
        from sam_jax.predictor import SamPredictor

        self.predictor = model if hasattr(model, "predict_batch") else SamPredictor(model)

    def _boxes(self, item: Any) -> list[dict]:
        if self._dets is None:
            return [{"bbox": a.bbox, "score": 1.0, "category_id": a.category_id} for a in item.annotations]
        dets = sorted(self._dets.get(item.image_id, []), key=lambda d: -d["score"])
        return dets[: self.settings.max_per_image]

    def run_image(self, item: Any) -> dict:
        dets = self._boxes(item)
        image = item.load_image()
        xywh = np.asarray([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        masks = box_prompts_to_masks(
            self.predictor, image, xyxy, self.settings.boxes_per_batch, self.settings.refine
        )
        return {
            "image_id": item.image_id,
            "detections": [
                {
                    "image_id": item.image_id,
                    "category_id": d["category_id"],
                    "score": d["score"],
                    "segmentation": _to_rle(m),
                }
                for d, m in zip(dets, masks)
            ],
        }

    def summarize(self, records: list[dict], dataset: Any) -> dict:
        metrics = segm_ap(dataset.coco_gt(), [d for r in records for d in r["detections"]])
        metrics["num_images"] = len(records)
        metrics["boxes"] = "ground truth" if self._dets is None else self.settings.detections
        return metrics

    def table(self, metrics: dict) -> str:
        from sam_jax.evaluation.report import markdown_table

        keys = [k for k in metrics if k.startswith("AP")]
        return markdown_table(keys, [[metrics[k] for k in keys]])

    def plot(self, metrics: dict, path: str) -> None:
        from sam_jax.evaluation.report import save_plot

        keys = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
        save_plot(
            path,
            "mask AP (box prompts)",
            "metric",
            "AP",
            [("segm", list(range(len(keys))), [metrics[k] for k in keys])],
            ylim=(0.0, 1.0),
        )


__all__ = ["InstanceSettings", "InstancesProtocol", "box_prompts_to_masks", "segm_ap"]
