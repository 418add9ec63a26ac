"""Zero-shot object proposals (paper section 7.3, appendix D.3).

The automatic mask generator with the paper's settings: a 64x64 point grid,
no crops, no predicted-IoU or stability filter, box NMS at 0.9; the surviving
masks are ranked by the mean of predicted IoU and stability score and at most
1000 are kept per image. Mask average recall is computed with pycocotools
``COCOeval`` (``iouType="segm"``, ``params.useCats = 0``, ``maxDets = [10, 100,
1000]``): AR@10/100/1000 overall and AR@1000 for small / medium / large objects.
When the ground truth's categories carry LVIS ``frequency`` tags (``r``, ``c``,
``f``), AR@1000 is also reported for the objects of each frequency group.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAX_DETS = (10, 100, 1000)


@dataclass(frozen=True)
class ProposalSettings:
    """AMG and ranking settings (paper defaults)."""

    points_per_side: int = 64
    points_per_batch: int = 64
    box_nms_thresh: float = 0.9
    max_proposals: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


def unfiltered_generator(model: Any, settings: Any, **options: Any):
    """The ``SamAutomaticMaskGenerator`` of the zero-shot protocols (appendix D.2, D.3): a
    ``settings.points_per_side`` grid, no crops, no IoU or stability filter, only NMS."""
    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(
        model,
        points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=settings.box_nms_thresh,
        crop_n_layers=0,
        **options,
    )


def proposal_generator(model: Any, settings: ProposalSettings):
    """The ``SamAutomaticMaskGenerator`` configured as in appendix D.3."""
    return unfiltered_generator(model, settings, output_mode="coco_rle")


def rank_proposals(records: list[dict], image_id: int, limit: int) -> list[dict]:
    """AMG records -> COCO results (``image_id``, ``category_id`` 1, ``segmentation``,
    ``score`` = mean of predicted IoU and stability), best first, at most ``limit``;
    empty masks dropped."""
    out = []
    for r in records:
        if r.get("area", 1) <= 0:
            continue
        score = 0.5 * (float(r["predicted_iou"]) + float(r["stability_score"]))
        seg = dict(r["segmentation"])
        if isinstance(seg["counts"], bytes):
            seg["counts"] = seg["counts"].decode("ascii")
        out.append(
            {
                "image_id": int(image_id),
                "category_id": 1,
                "segmentation": seg,
                "score": float(np.nan_to_num(score, nan=0.0)),
            }
        )
    out.sort(key=lambda d: -d["score"])
    return out[:limit]


def _coco(gt: dict):
    from pycocotools.coco import COCO

    gt = dict(gt, annotations=[dict(a, iscrowd=a.get("iscrowd", 0)) for a in gt["annotations"]])
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def fresh_results(detections: list[dict]) -> list[dict]:
    """Copies of COCO results without the fields ``COCO.loadRes`` adds in place (``bbox``,
    ``area``, ``id``), so that the same results can be scored more than once."""
    return [{k: v for k, v in d.items() if k not in ("bbox", "area", "id")} for d in detections]


def average_recall(gt: dict, detections: list[dict], max_dets: tuple[int, ...] = MAX_DETS) -> dict:
    """Class-agnostic mask AR of COCO ``detections`` against the COCO dict ``gt``
    (pycocotools, ``useCats = 0``). Returns ``{"AR@k": ...}`` for each ``k`` and
    ``AR_small/medium/large@max(k)``."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(fresh_results(detections)) if detections else None
    if coco_dt is None:
        return {
            **{f"AR@{k}": 0.0 for k in max_dets},
            **{f"AR_{a}@{max_dets[-1]}": 0.0 for a in ("small", "medium", "large")},
        }
    ev = COCOeval(coco_gt, coco_dt, "segm")
    ev.params.useCats = 0
    ev.params.maxDets = list(max_dets)
    ev.params.imgIds = sorted(coco_gt.getImgIds())
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    out = {f"AR@{k}": float(s[6 + i]) for i, k in enumerate(max_dets)}
    out.update(
        {f"AR_{a}@{max_dets[-1]}": float(s[9 + i]) for i, a in enumerate(("small", "medium", "large"))}
    )
    return out


class ProposalsProtocol:
    """The proposal protocol for :func:`sam_jax.evaluation.evaluate`."""

    name = "proposals"

    def __init__(self, settings: ProposalSettings | None = None) -> None:
        self.settings = settings or ProposalSettings()
        self.generator: Any = None

    def setup(self, model: Any) -> None:
        """``model``: a ``SamModel`` or a ready generator (anything with ``generate``)."""
        self.generator = model if hasattr(model, "generate") else proposal_generator(model, self.settings)

    def run_image(self, item: Any) -> dict:
        records = self.generator.generate(item.load_image())
        return {
            "image_id": item.image_id,
            "detections": rank_proposals(records, item.image_id, self.settings.max_proposals),
        }

    def summarize(self, records: list[dict], dataset: Any) -> dict:
        gt = dataset.coco_gt()
        dets = [d for r in records for d in r["detections"]]
        metrics = average_recall(gt, dets)
        metrics["num_images"] = len(records)
        metrics["proposals_per_image"] = len(dets) / max(len(records), 1)
        freq = {c["id"]: c.get("frequency") for c in gt["categories"]}
        if any(freq.values()):
            for tag in ("r", "c", "f"):
                sub = dict(
                    gt, annotations=[a for a in gt["annotations"] if freq.get(a["category_id"]) == tag]
                )
                if sub["annotations"]:
                    metrics[f"AR@{MAX_DETS[-1]}_{tag}"] = average_recall(sub, dets)[f"AR@{MAX_DETS[-1]}"]
        return metrics

    def table(self, metrics: dict) -> str:
        from sam_jax.evaluation.report import markdown_table

        keys = [k for k in metrics if k.startswith("AR")]
        return markdown_table(keys, [[metrics[k] for k in keys]])

    def plot(self, metrics: dict, path: str) -> None:
        from sam_jax.evaluation.report import save_plot

        ks = list(MAX_DETS)
        save_plot(
            path,
            "mask average recall",
            "proposals per image",
            "AR",
            [("AR@k", ks, [metrics[f"AR@{k}"] for k in ks])],
            ylim=(0.0, 1.0),
        )


__all__ = [
    "ProposalSettings",
    "ProposalsProtocol",
    "MAX_DETS",
    "proposal_generator",
    "rank_proposals",
    "average_recall",
    "fresh_results",
]
