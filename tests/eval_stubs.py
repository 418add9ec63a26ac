"""Model stubs for the evaluation tests: predictors that answer with ground truth.

They implement the part of :class:`sam_jax.predictor.SamPredictor` the protocols
use (``set_image``, ``transform``, ``original_size``, ``predict_batch``) in
original-image pixels (identity transform).
"""

from __future__ import annotations

import numpy as np


class IdentityTransform:
    def apply_coords(self, coords, original_size):
        return np.array(coords, np.float64)

    def apply_boxes(self, boxes, original_size):
        return np.array(boxes, np.float64).reshape(-1, 4)


class GTPredictor:
    """Returns the ground-truth mask that holds the first (foreground) click of a
    row, or whose box equals the box prompt, shifted right by ``shift`` pixels.

    With ``multimask_output`` the three masks are (empty, answer, full image) with
    scores (0.1, 0.9, 0.2), so the most confident one is the answer.
    """

    def __init__(self, gt_masks: np.ndarray, shift: int = 0, low_res: int = 8):
        self.gt = np.asarray(gt_masks, bool)
        self.shift = shift
        self.low_res = low_res
        self.transform = IdentityTransform()
        self.original_size = None
        self.calls = []

    def set_image(self, image):
        self.original_size = image.shape[:2]

    def _answer(self, point=None, box=None):
        if point is not None:
            x, y = (int(v) for v in point)
            hits = [i for i, m in enumerate(self.gt) if m[y, x]]
        else:
            hits = [int(np.argmax([_box_iou(_box_of(m), box) for m in self.gt]))]
        m = self.gt[hits[0]] if hits else np.zeros(self.gt.shape[1:], bool)
        return np.roll(m, self.shift, axis=1) if self.shift else m

    def predict_batch(
        self,
        point_coords,
        point_labels,
        boxes=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        self.calls.append(
            dict(
                points=None if point_coords is None else np.array(point_coords),
                labels=None if point_labels is None else np.array(point_labels),
                boxes=None if boxes is None else np.array(boxes),
                mask_input=None if mask_input is None else np.array(mask_input),
                multimask_output=multimask_output,
            )
        )
        b = len(point_coords) if point_coords is not None else len(boxes)
        ans = np.stack(
            [
                self._answer(
                    None if point_coords is None else point_coords[i][0], None if boxes is None else boxes[i]
                )
                for i in range(b)
            ]
        )
        r = self.low_res
        if multimask_output:
            masks = np.stack([np.zeros_like(ans), ans, np.ones_like(ans)], axis=1)
            scores = np.tile(np.array([0.1, 0.9, 0.2], np.float32), (b, 1))
        else:
            masks, scores = ans[:, None], np.full((b, 1), 0.95, np.float32)
        return masks, scores, np.zeros(masks.shape[:2] + (r, r), np.float32)


def _box_of(m):
    """XYXY box with exclusive maxima (COCO's x + w)."""
    ys, xs = np.nonzero(m)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _box_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = ((x[2] - x[0]) * (x[3] - x[1]) for x in (a, b))
    return inter / (area_a + area_b - inter)


class ListGenerator:
    """An automatic mask generator stub returning fixed records per call."""

    def __init__(self, records_per_image):
        self.records = list(records_per_image)
        self.calls = 0

    def generate(self, image):
        out = self.records[self.calls]
        self.calls += 1
        return out
