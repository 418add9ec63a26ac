"""Zero-shot edge detection and the BSDS500 benchmark (paper section 7.2, appendix D.2).

Edge map of an image (:func:`edge_map`):

1. the automatic mask generator on a 16x16 grid (768 masks), no predicted-IoU
   or stability filter, box NMS (0.7), each mask with its unthresholded logits;
2. per mask, a Sobel filter on its probability map ``sigmoid(logits)``; responses
   that are not on the mask's outer boundary (the boundary pixels of the mask
   with its holes filled; the image border is no boundary) are zeroed;
3. the pixelwise maximum over masks, linearly normalised to [0, 1];
4. edge non-maximum suppression (:func:`edge_nms`): orientation from the second
   derivatives of the triangle-smoothed map, a pixel survives if it is not
   smaller than its two interpolated neighbours across the edge (radius 1,
   margin 1.01), responses within 5 px of the image border are attenuated
   linearly (the structured-edge toolbox's NMS settings).

Benchmark (:func:`match_counts`, :func:`bsds_metrics`), as the BSDS500 code:
for each of ``K`` = 99 thresholds ``t`` (``linspace(1/(K+1), 1 - 1/(K+1), K)``)
the map ``E >= t`` is thinned to one-pixel width and its pixels are matched
one-to-one to each human edge map, a pair allowed within ``0.0075 x`` the image
diagonal (maximum bipartite matching, :func:`scipy.sparse.csgraph.maximum_bipartite_matching`;
BSDS's ``correspondPixels`` solves a min-cost version of the same matching).
Recall counts the matched pixels of every human map over all their pixels;
precision counts the predicted pixels matched in any human map. ODS: best F of
the dataset-wide curve (interpolated between neighbouring thresholds); OIS: the
counts at each image's best threshold, summed; AP: precision interpolated at
recall 0, 0.01, ..., 1 (first occurrence of each recall value, missing values
count 0); R50: recall where precision crosses 0.5.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse, special
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class EdgeSettings:
    """AMG and benchmark settings (paper / BSDS defaults)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    box_nms_thresh: float = 0.7
    num_thresholds: int = 99
    max_dist: float = 0.0075
    thin: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def thresholds(k: int) -> np.ndarray:
    """The BSDS thresholds ``linspace(1/(k+1), 1 - 1/(k+1), k)``."""
    return np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)


# ----------------------------------------------------------------------------- edge maps


def mask_edges(logits: np.ndarray) -> np.ndarray:
    """Sobel magnitude of ``sigmoid(logits)`` ``(H, W)`` kept on the mask's outer boundary."""
    prob = special.expit(np.asarray(logits, np.float32))
    mag = np.hypot(ndimage.sobel(prob, axis=0), ndimage.sobel(prob, axis=1))
    filled = ndimage.binary_fill_holes(logits > 0)
    boundary = filled & ~ndimage.binary_erosion(filled, border_value=1)
    return np.where(boundary, mag, 0.0).astype(np.float32)


def edge_map(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """Normalised edge map ``(H, W)`` in [0, 1] of AMG records holding ``"logits"``."""
    out = np.zeros(shape, np.float32)
    for r in records:
        np.maximum(out, mask_edges(r["logits"]), out=out)
    peak = out.max()
    return out / peak if peak > 0 else out


def _conv_tri(x: np.ndarray, r: int) -> np.ndarray:
    """Separable triangle filter of radius ``r`` with symmetric padding."""
    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64)
    f /= f.sum()
    x = ndimage.convolve1d(x, f, axis=0, mode="reflect")
    return ndimage.convolve1d(x, f, axis=1, mode="reflect")


def edge_orientation(e: np.ndarray) -> np.ndarray:
    """Edge normal orientation in [0, pi) from second derivatives of the smoothed map."""
    s = _conv_tri(e.astype(np.float64), 4)
    oy, ox = np.gradient(s)
    oxy, oxx = np.gradient(ox)
    oyy, _ = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def edge_nms(e: np.ndarray, radius: int = 1, border: int = 5, margin: float = 1.01) -> np.ndarray:
    """Non-maximum suppression across the edge direction (module doc)."""
    e = np.asarray(e, np.float64)
    h, w = e.shape
    o = edge_orientation(e)
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    keep = e > 0
    for d in range(-radius, radius + 1):
        if d == 0:
            continue
        ny = np.clip(ys + d * np.sin(o), 0, h - 1)
        nx = np.clip(xs + d * np.cos(o), 0, w - 1)
        neighbour = ndimage.map_coordinates(e, [ny, nx], order=1, mode="nearest")
        keep &= e * margin >= neighbour
    out = np.where(keep, e, 0.0)
    if border > 0:
        b = min(border, h // 2, w // 2)
        for i in range(b):
            s = i / border
            out[i, :] *= s
            out[h - 1 - i, :] *= s
            out[:, i] *= s
            out[:, w - 1 - i] *= s
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- matching


def _thin(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import thin

    return thin(mask)


def _match_count(pred_idx: np.ndarray, pairs: sparse.csr_matrix) -> tuple[int, np.ndarray]:
    """Matched count and the matched-flag of each predicted pixel (rows ``pred_idx``)."""
    sub = pairs[pred_idx]
    if sub.nnz == 0:
        return 0, np.zeros(len(pred_idx), bool)
    match = maximum_bipartite_matching(sub.tocsr(), perm_type="column")
    matched = match >= 0
    return int(matched.sum()), matched


def match_counts(
    edges: np.ndarray,
    ground_truth: np.ndarray,
    num_thresholds: int = 99,
    max_dist: float = 0.0075,
    thin: bool = True,
) -> dict[str, np.ndarray]:
    """BSDS counts of an edge map ``(H, W)`` in [0, 1] against human maps ``(G, H, W)``.

    Returns ``cntR, sumR, cntP, sumP`` arrays ``(K,)`` (module doc).
    """
    edges = np.asarray(edges, np.float64)
    gts = np.asarray(ground_truth, bool).reshape((-1,) + edges.shape)
    k = num_thresholds
    t = thresholds(k)
    radius = max_dist * float(np.hypot(*edges.shape))
    cand = np.argwhere(edges >= t[0])  # every pixel any threshold can keep
    index = -np.ones(edges.shape, np.int64)
    index[cand[:, 0], cand[:, 1]] = np.arange(len(cand))
    tree = cKDTree(cand) if len(cand) else None
    pair_mats = []
    for g in gts:
        gp = np.argwhere(g)
        if tree is None or len(gp) == 0:
            pair_mats.append((sparse.csr_matrix((len(cand), max(len(gp), 1))), len(gp)))
            continue
        near = tree.query_ball_point(gp, r=radius + 1e-9)
        rows = np.concatenate([np.asarray(n, np.int64) for n in near])
        cols = np.repeat(np.arange(len(gp)), [len(n) for n in near])
        mat = sparse.csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(cand), len(gp)))
        pair_mats.append((mat, len(gp)))
    out = {key: np.zeros(k, np.int64) for key in ("cntR", "sumR", "cntP", "sumP")}
    for i, th in enumerate(t):
        b = edges >= th
        if thin:
            b = _thin(b)
        sel = index[b]
        out["sumP"][i] = len(sel)
        any_match = np.zeros(len(sel), bool)
        for mat, n_gt in pair_mats:
            c, matched = _match_count(sel, mat)
            out["cntR"][i] += c
            out["sumR"][i] += n_gt
            any_match |= matched
        out["cntP"][i] = int(any_match.sum())
    return out


# ----------------------------------------------------------------------------- metrics


def _rpf(cnt_r, sum_r, cnt_p, sum_p):
    r = cnt_r / np.maximum(EPS, sum_r)
    p = cnt_p / np.maximum(EPS, sum_p)
    f = 2 * p * r / np.maximum(EPS, p + r)
    return r, p, f


def _best_rpf(t, r, p) -> tuple[float, float, float, float]:
    """Best F along the curve, interpolating linearly between neighbouring thresholds."""
    if len(t) == 1:
        f = 2 * p[0] * r[0] / max(EPS, p[0] + r[0])
        return float(t[0]), float(r[0]), float(p[0]), float(f)
    a = np.linspace(0, 1, 100)[:, None]
    ti = a * t[1:] + (1 - a) * t[:-1]
    ri = a * r[1:] + (1 - a) * r[:-1]
    pi = a * p[1:] + (1 - a) * p[:-1]
    fi = 2 * pi * ri / np.maximum(EPS, pi + ri)
    j = np.unravel_index(np.argmax(fi), fi.shape)
    return float(ti[j]), float(ri[j]), float(pi[j]), float(fi[j])


def bsds_metrics(per_image: list[dict]) -> dict[str, Any]:
    """ODS, OIS, AP, R50 and the PR curve from per-image :func:`match_counts` results."""
    if not per_image:
        raise ValueError("no images were evaluated")
    cnt = {
        key: np.stack([np.asarray(c[key], np.float64) for c in per_image])
        for key in ("cntR", "sumR", "cntP", "sumP")
    }
    k = cnt["cntR"].shape[1]
    t = thresholds(k)
    # OIS: each image at its own best threshold
    _, _, f_img = _rpf(cnt["cntR"], cnt["sumR"], cnt["cntP"], cnt["sumP"])
    best = np.argmax(f_img, axis=1)
    rows = np.arange(len(best))
    ois_r, ois_p, ois_f = _rpf(*(cnt[key][rows, best].sum() for key in ("cntR", "sumR", "cntP", "sumP")))
    # ODS: the dataset-wide curve
    r, p, _ = _rpf(*(cnt[key].sum(axis=0) for key in ("cntR", "sumR", "cntP", "sumP")))
    ods_t, ods_r, ods_p, ods_f = _best_rpf(t, r, p)
    _, first = np.unique(r, return_index=True)
    ap = 0.0
    if len(first) > 1:
        grid = np.linspace(0, 1, 101)
        rr, pp = r[first], p[first]
        vals = np.interp(grid, rr, pp, left=np.nan, right=np.nan)
        ap = float(np.nansum(vals) / 100)
    _, by_p = np.unique(p, return_index=True)
    ps, rs = p[by_p], r[by_p]
    target = max(ps[0], 0.5)
    r50 = float(np.interp(target, ps, rs)) if target <= ps[-1] else float("nan")
    return {
        "ODS": ods_f,
        "OIS": float(ois_f),
        "AP": ap,
        "R50": r50,
        "ODS_threshold": ods_t,
        "ODS_recall": ods_r,
        "ODS_precision": ods_p,
        "OIS_recall": float(ois_r),
        "OIS_precision": float(ois_p),
        "num_images": len(per_image),
        "curve": {
            "threshold": t.round(4).tolist(),
            "recall": r.round(6).tolist(),
            "precision": p.round(6).tolist(),
        },
    }


# ----------------------------------------------------------------------------- dataset


@dataclass
class EdgeImage:
    """An image and its human edge maps (``load_edges() -> (G, H, W)`` bool)."""

    image_id: int
    file_name: str
    image_path: str
    edge_paths: list[str]

    def load_image(self) -> np.ndarray:
        from sam_jax.evaluation.datasets import read_array, to_rgb_uint8

        return to_rgb_uint8(read_array(self.image_path))

    def load_edges(self) -> np.ndarray:
        from sam_jax.evaluation.datasets import DatasetError, read_array

        maps = []
        for path in self.edge_paths:
            if path.endswith(".mat"):
                from scipy.io import loadmat

                try:
                    gt = loadmat(path)["groundTruth"]
                    maps += [np.asarray(g["Boundaries"][0, 0], bool) for g in gt.ravel()]
                except (KeyError, ValueError, IndexError, TypeError) as e:
                    raise DatasetError(f"{path} is not a BSDS groundTruth .mat: {e}") from None
            else:
                a = read_array(path)
                maps.append((a.max(axis=-1) if a.ndim == 3 else a) > 0)
        return np.stack(maps)


@dataclass
class EdgeDataset:
    name: str
    images: list[EdgeImage]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(self.images)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "kind": "edges",
            "num_images": len(self.images),
            "num_masks": None,
            "masks_before_subsampling": None,
        }


def load_edge_dataset(image_dir: str, edge_dir: str, max_images: int | None = None) -> EdgeDataset:
    """Images and their human edge maps: ``<stem>.mat`` (BSDS) or ``<stem>.png`` /
    ``<stem>_<k>.png`` (one PNG per annotator, nonzero = edge) in ``edge_dir``."""
    from sam_jax.evaluation.datasets import IMAGE_SUFFIXES, DatasetError

    for d in (image_dir, edge_dir):
        if not os.path.isdir(d):
            raise DatasetError(f"folder {d} does not exist")
    items = []
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_SUFFIXES:
            continue
        paths = sorted(
            glob.glob(os.path.join(glob.escape(edge_dir), stem + ".mat"))
            + glob.glob(os.path.join(glob.escape(edge_dir), stem + ".png"))
            + glob.glob(os.path.join(glob.escape(edge_dir), stem + "_*.png"))
        )
        if paths:
            items.append(EdgeImage(len(items), name, os.path.join(image_dir, name), paths))
    if not items:
        raise DatasetError(f"no image in {image_dir} has edge maps (<stem>.mat or <stem>*.png) in {edge_dir}")
    return EdgeDataset(os.path.basename(os.path.normpath(image_dir)), items[:max_images])


# ----------------------------------------------------------------------------- protocol


def edge_generator(model: Any, settings: EdgeSettings):
    """The ``SamAutomaticMaskGenerator`` configured as in appendix D.2."""
    from sam_jax.evaluation.proposals import unfiltered_generator

    return unfiltered_generator(model, settings, output_mode="uncompressed_rle", return_logits=True)


class EdgesProtocol:
    """The edge protocol for :func:`sam_jax.evaluation.evaluate`."""

    name = "edges"

    def __init__(self, settings: EdgeSettings | None = None) -> None:
        self.settings = settings or EdgeSettings()
        self.generator: Any = None

    def setup(self, model: Any) -> None:
        self.generator = model if hasattr(model, "generate") else edge_generator(model, self.settings)

    def run_image(self, item: Any) -> dict:
        image = item.load_image()
        gts = item.load_edges()
        if gts.shape[1:] != image.shape[:2]:
            from sam_jax.evaluation.datasets import DatasetError

            raise DatasetError(f"{item.file_name}: edge maps are {gts.shape[1:]}, image is {image.shape[:2]}")
        e = edge_nms(edge_map(self.generator.generate(image), image.shape[:2]))
        c = match_counts(e, gts, self.settings.num_thresholds, self.settings.max_dist, self.settings.thin)
        return {"image_id": item.image_id, **{key: v.tolist() for key, v in c.items()}}

    def summarize(self, records: list[dict], dataset: Any = None) -> dict:
        return bsds_metrics(records)

    def table(self, metrics: dict) -> str:
        from sam_jax.evaluation.report import markdown_table

        return markdown_table(
            ["ODS", "OIS", "AP", "R50"], [[metrics["ODS"], metrics["OIS"], metrics["AP"], metrics["R50"]]]
        )

    def plot(self, metrics: dict, path: str) -> None:
        from sam_jax.evaluation.report import save_plot

        c = metrics["curve"]
        save_plot(
            path,
            f"edges: ODS {metrics['ODS']:.3f}, OIS {metrics['OIS']:.3f}",
            "recall",
            "precision",
            [("PR", c["recall"], c["precision"])],
            marker="",
            xlim=(0, 1),
            ylim=(0, 1),
            points=[("ODS", metrics["ODS_recall"], metrics["ODS_precision"])],
        )


__all__ = [
    "EdgeSettings",
    "EdgesProtocol",
    "EdgeDataset",
    "EdgeImage",
    "load_edge_dataset",
    "thresholds",
    "mask_edges",
    "edge_map",
    "edge_orientation",
    "edge_nms",
    "match_counts",
    "bsds_metrics",
    "edge_generator",
]
