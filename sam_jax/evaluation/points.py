"""Interactive point-to-mask evaluation (paper section 7.1, appendix D.1).

For every ground-truth mask, clicks are simulated one at a time:

* **first click** ``"center"``: the mask pixel farthest from the mask boundary
  (exact Euclidean distance transform of the mask padded by one background
  pixel, so the image border counts as boundary; the first maximum in row-major
  order); ``"random"``: a uniform, seeded mask pixel;
* **each next click** (the RITM clicker): the false-negative map ``gt & ~pred``
  and the false-positive map ``~gt & pred`` are distance-transformed the same
  way, already clicked pixels are zeroed, and the click goes to the first
  maximum of the map with the larger maximum (false negatives win only if
  strictly larger), labelled 1 (foreground) for a false negative, 0 otherwise.
  A perfect prediction therefore gets a background click at pixel (0, 0), as
  in RITM. All clicks so far are the point prompt, and the previous
  prediction's low-res logits are the mask prompt.

At one click the model returns three masks (multimask output): the default
score takes the most confident one ("ambiguity-aware"; it also seeds the next
click and the next mask prompt), the "oracle" the best of the three against
the ground truth. With more clicks only the single-mask output is used.

All masks of an image are decoded together: one :meth:`SamPredictor.predict_batch`
call per click for a fixed number of rows (``masks_per_batch``; the last batch
is padded with copies of a real mask whose results are dropped), so every
image reuses the same compiled decoder.

Metrics (:func:`summarize`): mIoU after ``N`` clicks for ``N`` in
``clicks`` (default 1, 2, 3, 5, 9; at most 20), the oracle mIoU at one click,
NoC@85 / NoC@90 (clicks needed to reach that IoU, ``max(clicks)`` when never
reached) and mIoU by mask area (COCO buckets: small < 32^2, medium < 96^2,
large).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

MAX_CLICKS = 20
AREA_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


@dataclass(frozen=True)
class PointSettings:
    """Settings of the point protocol.

    Attributes:
      clicks: the click counts ``N`` reported (1 <= N <= 20); ``max(clicks)``
        clicks are simulated per mask.
      first_click: ``"center"`` or ``"random"``.
      seed: seed of the random first click.
      masks_per_batch: rows decoded per call (a fixed shape for every image).
      noc_thresholds: IoU targets of NoC.
    """

    clicks: tuple[int, ...] = (1, 2, 3, 5, 9)
    first_click: str = "center"
    seed: int = 0
    masks_per_batch: int = 16
    noc_thresholds: tuple[float, ...] = (0.85, 0.90)

    def __post_init__(self) -> None:
        if not self.clicks or min(self.clicks) < 1 or max(self.clicks) > MAX_CLICKS:
            raise ValueError(f"clicks must be between 1 and {MAX_CLICKS}, got {self.clicks}")
        if self.first_click not in ("center", "random"):
            raise ValueError(f"first_click must be 'center' or 'random', got {self.first_click!r}")
        if self.masks_per_batch < 1:
            raise ValueError(f"masks_per_batch must be >= 1, got {self.masks_per_batch}")

    @property
    def max_clicks(self) -> int:
        return max(self.clicks)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- clicks


def farthest_from_boundary(
    region: np.ndarray, exclude: list[tuple[int, int]] = ()
) -> tuple[float, tuple[int, int]]:
    """``(max distance, (y, x))`` of the pixel of ``region`` ``(H, W)`` bool farthest from
    its boundary, the image border counting as boundary; pixels in ``exclude`` are
    skipped. The first maximum in row-major order; ``(0.0, (0, 0))`` if nothing is left.
    """
    rows = np.flatnonzero(region.any(axis=1))
    if len(rows) == 0:
        return 0.0, (0, 0)
    cols = np.flatnonzero(region.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Exact on the bounding box: every pixel outside it is background, and the
    # one-pixel padding supplies the nearest such pixel (or the image border).
    dt = ndimage.distance_transform_edt(np.pad(region[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    for y, x in exclude:
        if y0 <= y < y1 and x0 <= x < x1:
            dt[y - y0, x - x0] = 0.0
    i = int(np.argmax(dt))
    best = float(dt.flat[i])
    if best <= 0.0:
        return 0.0, (0, 0)
    return best, (int(y0 + i // dt.shape[1]), int(x0 + i % dt.shape[1]))


def center_click(mask: np.ndarray) -> tuple[int, int]:
    """``(y, x)`` of the mask pixel farthest from the mask boundary."""
    if not mask.any():
        raise ValueError("center_click of an empty mask")
    return farthest_from_boundary(mask)[1]


def random_click(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """``(y, x)`` of a uniform mask pixel."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("random_click of an empty mask")
    k = int(rng.integers(len(ys)))
    return int(ys[k]), int(xs[k])


def next_click(
    gt: np.ndarray, pred: np.ndarray, clicked: list[tuple[int, int]] = ()
) -> tuple[tuple[int, int], int]:
    """The corrective click ``((y, x), label)`` for prediction ``pred`` of ``gt`` (module doc)."""
    fn_dist, fn_at = farthest_from_boundary(gt & ~pred, clicked)
    fp_dist, fp_at = farthest_from_boundary(~gt & pred, clicked)
    return (fn_at, 1) if fn_dist > fp_dist else (fp_at, 0)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of ``(..., H, W)`` bool masks with ``gt`` (broadcast); 1.0 when both are empty."""
    inter = np.logical_and(pred, gt).sum(axis=(-2, -1), dtype=np.int64)
    union = np.logical_or(pred, gt).sum(axis=(-2, -1), dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# ----------------------------------------------------------------------------- protocol


def evaluate_image(
    predictor: Any,
    image: np.ndarray,
    masks: np.ndarray,
    settings: PointSettings,
    rng: np.random.Generator | None = None,
    keep_masks: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate the clicks for every mask of one image.

    Args:
      predictor: a :class:`~sam_jax.predictor.SamPredictor` (or anything with its
        ``set_image``, ``transform``, ``original_size`` and ``predict_batch``).
      image: ``(H, W, 3)`` uint8. masks: ``(M, H, W)`` bool ground truth.
    Returns:
      ``iou (M, K)`` (IoU after each click, default selection at one click),
      ``iou_oracle (M,)`` (best of three at one click), ``area (M,)``,
      ``clicks (M, K, 3)`` int (x, y, label) with ``K = settings.max_clicks``;
      with ``keep_masks`` also ``masks (M, K, H, W)`` bool, the prediction after each
      click (for pictures).
    """
    masks = np.asarray(masks, bool)
    m, k = len(masks), settings.max_clicks
    rng = rng if rng is not None else np.random.default_rng(settings.seed)
    out = {
        "iou": np.zeros((m, k)),
        "iou_oracle": np.zeros((m,)),
        "area": masks.sum(axis=(1, 2)).astype(np.int64),
        "clicks": np.zeros((m, k, 3), np.int64),
    }
    if keep_masks:
        out["masks"] = np.zeros((m, k) + masks.shape[1:], bool)
    if m == 0:
        return out
    predictor.set_image(image)
    b = settings.masks_per_batch
    for start in range(0, m, b):
        n = min(b, m - start)
        rows = np.concatenate([np.arange(start, start + n), np.full(b - n, start + n - 1)])
        res = _clicks_for_rows(predictor, masks[rows], n, k, settings.first_click, rng, keep_masks)
        for key in ("iou", "iou_oracle", "clicks") + (("masks",) if keep_masks else ()):
            out[key][start : start + n] = res[key][:n]
    return out


def _clicks_for_rows(
    predictor: Any,
    gt: np.ndarray,
    n: int,
    k: int,
    first: str,
    rng: np.random.Generator,
    keep_masks: bool = False,
) -> dict[str, np.ndarray]:
    """``k`` clicks for each of the ``len(gt)`` rows, of which the first ``n`` are real and
    the rest repeat row ``n - 1`` to keep the predictor's shapes fixed: their clicks are
    row ``n - 1``'s (not computed again) and their results are discarded."""
    b = len(gt)
    coords = np.zeros((b, k, 2), np.float64)
    labels = np.zeros((b, k), np.int32)
    clicked: list[list[tuple[int, int]]] = [[] for _ in range(b)]
    iou = np.zeros((b, k))
    oracle = np.zeros((b,))
    kept = np.zeros((b, k) + gt.shape[1:], bool) if keep_masks else None
    pred = prev = None
    rr = np.arange(b)
    for c in range(k):
        for r in range(n):
            if c == 0:
                (y, x), lab = (center_click(gt[r]) if first == "center" else random_click(gt[r], rng)), 1
            else:
                (y, x), lab = next_click(gt[r], pred[r], clicked[r])
            clicked[r].append((y, x))
            coords[r, c], labels[r, c] = (x, y), lab
        coords[n:, c], labels[n:, c] = coords[n - 1, c], labels[n - 1, c]
        pts = predictor.transform.apply_coords(coords[:, : c + 1], predictor.original_size)
        masks, scores, low = predictor.predict_batch(
            pts, labels[:, : c + 1], mask_input=prev, multimask_output=c == 0
        )
        if c == 0:
            best = np.argmax(scores, axis=1)
            ious = mask_iou(masks, gt[:, None])
            iou[:, 0], oracle[:] = ious[rr, best], ious.max(axis=1)
            pred, prev = masks[rr, best], low[rr, best][:, None]
        else:
            pred, prev = masks[:, 0], low[:, :1]
            iou[:, c] = mask_iou(pred, gt)
        if keep_masks:
            kept[:, c] = pred
    clicks = np.concatenate([coords.round().astype(np.int64), labels[..., None]], axis=-1)
    out = {"iou": iou, "iou_oracle": oracle, "clicks": clicks}
    if keep_masks:
        out["masks"] = kept
    return out


def noc(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Clicks needed per mask to reach ``threshold`` (``K`` when never), from ``iou (M, K)``."""
    hit = iou >= threshold
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1) + 1, iou.shape[1])


def summarize(
    iou: np.ndarray, iou_oracle: np.ndarray, area: np.ndarray, settings: PointSettings
) -> dict[str, Any]:
    """The protocol's metrics from the per-mask arrays of all images (module doc)."""
    if len(iou) == 0:
        raise ValueError("no masks were evaluated")
    out: dict[str, Any] = {
        "num_masks": int(len(iou)),
        "miou": {str(n): float(iou[:, n - 1].mean()) for n in settings.clicks},
        "miou_oracle_1": float(iou_oracle.mean()),
        "noc": {f"{round(t * 100)}": float(noc(iou, t).mean()) for t in settings.noc_thresholds},
        "noc_failures": {
            f"{round(t * 100)}": int((~(iou >= t).any(axis=1)).sum()) for t in settings.noc_thresholds
        },
        "miou_by_area": {},
    }
    for name, lo, hi in AREA_BUCKETS:
        sel = (area >= lo) & (area < hi)
        out["miou_by_area"][name] = {
            "num_masks": int(sel.sum()),
            **({str(n): float(iou[sel, n - 1].mean()) for n in settings.clicks} if sel.any() else {}),
        }
    return out


# ----------------------------------------------------------------------------- protocol object


class PointsProtocol:
    """The point protocol for :func:`sam_jax.evaluation.evaluate` (per-image records,
    summary, markdown table, mIoU-vs-clicks plot)."""

    name = "points"
    needs_masks = True

    def __init__(self, settings: PointSettings | None = None) -> None:
        self.settings = settings or PointSettings()
        self.predictor: Any = None

    def setup(self, model: Any) -> None:
        """``model``: a ``SamModel`` or a ready predictor (anything with ``predict_batch``)."""
        from sam_jax.predictor import SamPredictor

        self.predictor = model if hasattr(model, "predict_batch") else SamPredictor(model)

    def run_image(self, item: Any) -> dict:
        image, masks = item.load()
        rng = np.random.default_rng([self.settings.seed, item.image_id])
        res = evaluate_image(self.predictor, image, masks, self.settings, rng)
        return {
            "image_id": item.image_id,
            "ann_ids": [a.id for a in item.annotations],
            "iou": np.round(res["iou"], 6).tolist(),
            "iou_oracle": np.round(res["iou_oracle"], 6).tolist(),
            "area": res["area"].tolist(),
            "clicks": res["clicks"].tolist(),
        }

    def summarize(self, records: list[dict], dataset: Any = None) -> dict:
        k = self.settings.max_clicks
        iou = np.concatenate([np.asarray(r["iou"], np.float64).reshape(-1, k) for r in records])
        oracle = np.concatenate([np.asarray(r["iou_oracle"], np.float64) for r in records])
        area = np.concatenate([np.asarray(r["area"], np.float64) for r in records])
        return summarize(iou, oracle, area, self.settings)

    def table(self, metrics: dict) -> str:
        from sam_jax.evaluation.report import markdown_table

        ns = list(metrics["miou"])
        rows = [["mIoU (all)"] + [metrics["miou"][n] for n in ns]]
        for name, _, _ in AREA_BUCKETS:
            b = metrics["miou_by_area"][name]
            rows.append([f"mIoU {name} ({b['num_masks']})"] + [b.get(n, float("nan")) for n in ns])
        text = markdown_table(["clicks"] + ns, rows)
        extra = markdown_table(
            ["oracle mIoU @1", *[f"NoC@{t}" for t in metrics["noc"]], "masks"],
            [[metrics["miou_oracle_1"], *metrics["noc"].values(), metrics["num_masks"]]],
        )
        return text + "\n\n" + extra

    def plot(self, metrics: dict, path: str) -> None:
        from sam_jax.evaluation.report import save_plot

        ns = [int(n) for n in metrics["miou"]]
        save_plot(
            path,
            "mIoU vs number of clicks",
            "clicks",
            "mIoU",
            [("ambiguity-aware / single mask", ns, list(metrics["miou"].values()))],
            ylim=(0.0, 1.0),
            points=[("oracle @1", 1, metrics["miou_oracle_1"])],
        )


__all__ = [
    "PointSettings",
    "PointsProtocol",
    "MAX_CLICKS",
    "AREA_BUCKETS",
    "farthest_from_boundary",
    "center_click",
    "random_click",
    "next_click",
    "mask_iou",
    "evaluate_image",
    "noc",
    "summarize",
]
