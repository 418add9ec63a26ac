"""``SamAutomaticMaskGenerator``: masks for a whole image from a grid of points.

A drop-in for ``segment_anything.SamAutomaticMaskGenerator`` (the fully
automatic stage of the data engine, paper section 4 and Appendix B). For each
crop (the image, then optional layers of overlapping crops; all crops are
embedded in batched calls), the crop's point grid is decoded
``points_per_batch`` points at a time through the predictor's batched API
(:meth:`SamPredictor.predict_torch`, low-res logits left on the device). Only
the masks whose predicted IoU passes its threshold are upsampled to the crop
(:meth:`SamPredictor.postprocess`); one jitted function then computes their
stability scores, thresholds and boxes, so only small per-mask numbers and the
binary masks that pass every filter leave the device.
Masks are filtered by predicted IoU, stability and crop-edge contact, stored as
RLE, de-duplicated by greedy box NMS (on the device) within each crop and across
crops, optionally cleaned of small holes and islands, and returned as records::

    {"segmentation", "area", "bbox" (XYWH), "predicted_iou", "point_coords",
     "stability_score", "crop_box" (XYWH)}

``segmentation`` is an ``(H, W)`` bool array (``output_mode="binary_mask"``),
an uncompressed RLE dict (``"uncompressed_rle"``) or a COCO RLE with string
counts (``"coco_rle"``). With ``return_logits=True`` each record also holds
``"logits"``: the mask's unthresholded logits ``(H, W)`` float16 at the image's
size (``-inf`` outside its crop), e.g. for edge detection (paper 7.2).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sam_jax.amg import (
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_area,
    box_nms,
    box_xyxy_to_xywh,
    bucket_size,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from sam_jax.modeling.sam import MASK_THRESHOLD
from sam_jax.predictor import SamPredictor, as_rgb_uint8
from sam_jax.sam_model import SamModel

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@jax.jit
def _mask_stats(logits: jax.Array, offset: jax.Array):
    """Logits ``(M, h, w)`` at the crop's size -> per-mask stability ``(M,)``, boxes
    ``(M, 4)`` int32 in the crop frame and binary masks ``(M, h, w)``."""
    stability = calculate_stability_score(logits, MASK_THRESHOLD, offset)
    masks = logits > MASK_THRESHOLD
    return stability, batched_mask_to_box(masks), masks


_boxes_of_masks = jax.jit(batched_mask_to_box)


class SamAutomaticMaskGenerator:
    """Automatic mask generation; arguments as the reference (paper Appendix B).

    Args:
      model: a :class:`SamModel`.
      points_per_side: grid points per side of the image (None with ``point_grids``).
      points_per_batch: points decoded together.
      pred_iou_thresh: keep masks whose predicted IoU is ``>`` this (0 disables).
      stability_score_thresh: keep masks whose stability is ``>=`` this (0 disables).
      stability_score_offset: logit offset of the stability score.
      box_nms_thresh: box IoU threshold of NMS within a crop.
      crop_n_layers: layers of crops (layer ``k`` has ``4^k`` crops).
      crop_nms_thresh: box IoU threshold of NMS across crops.
      crop_overlap_ratio: overlap of neighbouring crops, as a share of the short side.
      crop_n_points_downscale_factor: points per side shrink by this per layer.
      point_grids: explicit ``(n_i, 2)`` grids in ``[0, 1]``, one per layer.
      min_mask_region_area: fill holes and drop islands smaller than this (pixels).
      output_mode: ``"binary_mask"``, ``"uncompressed_rle"`` or ``"coco_rle"``.
      return_logits: also return each mask's unthresholded logits (module doc).
    """

    def __init__(
        self,
        model: SamModel,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        return_logits: bool = False,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        point_grids = [np.asarray(g, np.float64) for g in point_grids]
        if len(point_grids) != crop_n_layers + 1:
            raise ValueError(
                f"need {crop_n_layers + 1} point grids (one per crop layer), got {len(point_grids)}"
            )
        for g in point_grids:
            if g.ndim != 2 or g.shape[1] != 2:
                raise ValueError(f"each point grid must have shape (n, 2), got {g.shape}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        self.predictor = SamPredictor(model)
        self.point_grids = point_grids
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.return_logits = bool(return_logits)

    def generate(self, image: np.ndarray, embedded_at: int | None = None) -> list[dict[str, Any]]:
        """Masks of ``image`` ``(H, W, 3)`` uint8 RGB, as a list of records (module doc).

        ``embedded_at``: the crops of ``image`` (in ``generate_crop_boxes`` order) are
        already embedded in ``self.predictor``, from index ``embedded_at`` of its last
        ``set_images`` call (several images' crops embedded together, as
        ``sam_jax.automatic_generation`` does); None embeds them here.
        """
        image = as_rgb_uint8(image, "RGB")
        data = self._generate_masks(image, embedded_at)
        if self.min_mask_region_area > 0 and data["rles"]:
            data = self._postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )

        records = []
        for i, rle in enumerate(data["rles"]):
            if self.output_mode == "coco_rle":
                seg: Any = coco_encode_rle(rle)
            elif self.output_mode == "binary_mask":
                seg = rle_to_mask(rle)
            else:
                seg = rle
            records.append(
                {
                    "segmentation": seg,
                    "area": area_from_rle(rle),
                    "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                    "predicted_iou": float(data["iou_preds"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": float(data["stability_score"][i]),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
                    **({"logits": data["logits"][i]} if self.return_logits else {}),
                }
            )
        return records

    # ------------------------------------------------------------------ internals

    def _generate_masks(self, image: np.ndarray, embedded_at: int | None = None) -> dict[str, Any]:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        if embedded_at is None:
            crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in crop_boxes]
            self.predictor.set_images(crops)  # all crops embedded in batched calls
        first = embedded_at or 0
        parts = [
            self._process_crop(first + i, box, layer, orig_size)
            for i, (box, layer) in enumerate(zip(crop_boxes, layer_idxs))
        ]
        if embedded_at is None:
            self.predictor.reset_image()
        data = _concat(parts)
        if len(crop_boxes) > 1 and data["rles"]:
            # Prefer masks from smaller crops.
            scores = 1.0 / box_area(data["crop_boxes"]).astype(np.float32)
            data = _select(data, box_nms(data["boxes"], scores, self.crop_nms_thresh))
        return data

    def _process_crop(
        self, index: int, crop_box: list[int], layer: int, orig_size: tuple[int, int]
    ) -> dict[str, Any]:
        self.predictor.use_image(index)
        crop_size = self.predictor.original_size
        points = self.point_grids[layer] * np.array(crop_size, np.float64)[None, ::-1]
        model_points = self.predictor.transform.apply_coords(points, crop_size)
        # Every batch (the last one padded) has the same, power-of-two size.
        p = bucket_size(min(self.points_per_batch, len(points)))
        labels = np.ones((p, 1), np.int32)
        parts = []
        for sl in batch_iterator(self.points_per_batch, len(points)):
            n = sl.stop - sl.start
            batch = np.zeros((p, 1, 2), np.float32)
            batch[:n, 0] = model_points[sl]
            _, iou, low = self.predictor.predict_torch(batch, labels, multimask_output=True, upsample=False)
            parts.append(
                self._filter_batch(
                    np.asarray(iou).reshape(-1)[: 3 * n],
                    low.reshape((-1,) + low.shape[2:]),
                    np.repeat(points[sl], 3, axis=0),
                    crop_box,
                    orig_size,
                )
            )
        data = _concat(parts)
        if data["rles"]:
            data = _select(data, box_nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(data["rles"]), 1))
        if self.return_logits:
            x0, y0, x1, y1 = crop_box
            data["logits"] = np.pad(
                data["logits"],
                ((0, 0), (y0, orig_size[0] - y1), (x0, orig_size[1] - x1)),
                constant_values=-np.inf,
            )
        return data

    def _filter_batch(self, iou, low_res, points, crop_box, orig_size):
        """Filter one batch's ``M`` masks (point-major): ``iou (M,)`` on the host, their
        low-res logits ``(>= M, r, r)`` on the device.

        The predicted-IoU filter runs first, so only the masks passing it are upsampled
        to the crop's size (the stability score, thresholds and boxes are computed on
        those logits, as the reference computes them); only the masks passing every
        filter leave the device.
        """
        orig_h, orig_w = orig_size
        idx = np.arange(len(iou))
        # Thresholds compared in float32, as the reference's tensors do.
        if self.pred_iou_thresh > 0.0:
            idx = idx[iou > np.float32(self.pred_iou_thresh)]
        out = {
            "rles": [],
            "iou_preds": iou[:0],
            "stability_score": np.zeros((0,), np.float32),
            "boxes": np.zeros((0, 4), np.int64),
            "points": points[:0],
        }
        if self.return_logits:
            out["logits"] = np.zeros((0, *self.predictor.original_size), np.float16)
        if len(idx) == 0:
            return out
        # A power-of-two number of rows (the padding repeats a kept row): few compiled shapes.
        rows = np.full(bucket_size(len(idx)), idx[0])
        rows[: len(idx)] = idx
        logits = self.predictor.postprocess(low_res[rows], return_logits=True)
        stab, boxes, masks = _mask_stats(logits, np.float32(self.stability_score_offset))
        stab, boxes = np.asarray(stab)[: len(idx)], np.asarray(boxes)[: len(idx)]
        keep = np.ones(len(idx), bool)
        if self.stability_score_thresh > 0.0:
            keep &= stab >= np.float32(self.stability_score_thresh)
        keep &= ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        sel = np.flatnonzero(keep)
        if len(sel) == 0:
            return out
        kept = np.asarray(masks[sel])
        idx = idx[sel]
        out = {
            "rles": mask_to_rle(uncrop_masks(kept, crop_box, orig_h, orig_w)),
            "iou_preds": iou[idx],
            "stability_score": stab[sel],
            "boxes": boxes[sel].astype(np.int64),
            "points": points[idx],
        }
        if self.return_logits:
            out["logits"] = np.asarray(logits[sel]).astype(np.float16)
        return out

    @staticmethod
    def _postprocess_small_regions(data: dict[str, Any], min_area: int, nms_thresh: float) -> dict[str, Any]:
        """Fill small holes, drop small islands, recompute boxes and NMS again,
        preferring masks the cleanup left unchanged."""
        masks, unchanged = [], []
        for rle in data["rles"]:
            mask = rle_to_mask(rle)
            mask, holes_changed = remove_small_regions(mask, min_area, "holes")
            mask, islands_changed = remove_small_regions(mask, min_area, "islands")
            masks.append(mask)
            unchanged.append(not (holes_changed or islands_changed))
        stack = np.stack(masks)
        n = len(stack)
        padded = np.zeros((bucket_size(n),) + stack.shape[1:], bool)
        padded[:n] = stack
        boxes = np.asarray(_boxes_of_masks(padded))[:n].astype(np.int64)
        scores = np.asarray(unchanged, np.float32)
        keep = box_nms(boxes, scores, nms_thresh)
        data = dict(data, rles=list(data["rles"]), boxes=np.array(data["boxes"], copy=True))
        for i in keep:
            if not unchanged[i]:
                data["rles"][i] = mask_to_rle(stack[i : i + 1])[0]
                data["boxes"][i] = boxes[i]
        return _select(data, keep)


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-batch (or per-crop) results field by field."""
    out: dict[str, Any] = {"rles": [r for p in parts for r in p["rles"]]}
    for key in parts[0]:
        if key != "rles":
            out[key] = np.concatenate([p[key] for p in parts], axis=0)
    return out


def _select(data: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    """Rows ``idx`` (in that order) of every field."""
    return {k: ([v[i] for i in idx] if k == "rles" else v[idx]) for k, v in data.items()}


__all__ = ["SamAutomaticMaskGenerator", "OUTPUT_MODES"]
