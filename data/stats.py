"""Dataset statistics of an SA-1B-format corpus (paper section 5, Figures 5-7).

::

    python -m data.stats /data/sa1b/sa_*.tar --out out/stats
    python -m data.stats out/engine/*.tar --compare /data/manual/*.tar \
        --labels automatic manual --out out/stats_cmp

One pass over the annotations of every record (the JPEG bytes are never read), in
parallel over the local cores (``--workers``, default all), with a progress bar.
Per corpus it measures what the paper plots for SA-1B:

* **masks per image** (Figure 6, left): the number of annotations of each image,
  kept exactly (a histogram over the count);
* **relative mask size** (Figure 6, middle): ``sqrt(mask area / image area)``,
  a histogram of 100 bins over ``[0, 1]``;
* **mask-centre distribution** (Figure 5): the centroid of each mask (mean of its
  pixel centres) divided by the image width and height, a ``50 x 50`` histogram
  over the unit square (row = y, column = x);
* **mask concavity** (Figure 6, right): ``1 - mask area / area of its convex hull``,
  a histogram of 100 bins over ``[0, 1]``. The hull is that of the mask's pixel
  squares (the union of unit squares, corners at integer coordinates), so an
  axis-aligned rectangle has concavity exactly 0 and an ``a x a`` square with a
  ``b x b`` corner removed has ``1 - (a^2 - b^2) / (a^2 - b^2 / 2)``.

Every quantity comes from the COCO RLE runs (:mod:`data.rle`) without rasterising a
mask: a run is split into at most three rectangles (its first column, the full
columns, its last column), whose areas and coordinate sums give the area and the
centroid, and whose corners span the convex hull. Means are exact; quantiles are
read from the histograms (to a bin: 0.01).

``stats.json`` holds, per corpus: ``label``, ``shards``, ``images``, ``masks``,
``skipped`` (bad records by reason, as the training pipeline names them: a record
with an unreadable or inconsistent annotation is skipped whole), ``empty_masks``
(annotations without a pixel: counted per image, not measured), and the four
statistics (``mean``, quantiles and histograms with their bin edges). Four plots,
each with every corpus side by side: ``masks_per_image.png`` (the paper's bins),
``relative_size.png``, ``concavity.png`` and ``centres.png``. Files are written
atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import itertools
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from scipy.spatial import ConvexHull

from data import rle, sa1b
from data.status import Status
from data.subsets import source_name
from sam_jax import atomic_io

__all__ = ["MaskGeometry", "mask_geometry", "CorpusStats", "corpus_stats", "write_report", "main"]

SIZE_BINS = 100
CONCAVITY_BINS = 100
CENTRE_GRID = 50
# Figure 6 (left): the paper's bins of masks per image.
COUNT_BINS = ((0, 0), (1, 10), (11, 50), (51, 100), (101, 200), (201, None))
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


# ------------------------------------------------------------ one mask
def _rects(cnt: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The foreground of an RLE as disjoint rectangles ``[x0, x1) x [y0, y1)`` (each (n,)).

    A run ``[a, b)`` of linear indices ``q = x * h + y`` covers the end of column
    ``a // h``, the full columns between, and the start of column ``(b - 1) // h``."""
    a, b = rle.fg_runs(cnt)
    c0, c1 = a // h, (b - 1) // h
    r0, r1 = a % h, (b - 1) % h + 1
    one, span = c0 == c1, c0 != c1
    mid = c1 > c0 + 1
    x0 = np.concatenate([c0[one], c0[span], c0[mid] + 1, c1[span]])
    x1 = np.concatenate([c0[one] + 1, c0[span] + 1, c1[mid], c1[span] + 1])
    y0 = np.concatenate([r0[one], r0[span], np.zeros(mid.sum(), np.int64), np.zeros(span.sum(), np.int64)])
    y1 = np.concatenate([r1[one], np.full(span.sum(), h), np.full(mid.sum(), h), r1[span]])
    return x0, x1, y0, y1


@dataclasses.dataclass(frozen=True)
class MaskGeometry:
    """``area`` (pixels), centroid ``(cx, cy)`` of the pixel centres (pixel units, x =
    column), and ``hull_area`` of the convex hull of the pixel squares."""

    area: int
    cx: float
    cy: float
    hull_area: float

    @property
    def concavity(self) -> float:
        return max(0.0, 1.0 - self.area / self.hull_area)


def mask_geometry(cnt: np.ndarray, h: int) -> MaskGeometry | None:
    """The geometry of a mask given by its RLE runs (:func:`data.rle.decode_counts`) and
    height ``h``; None for an empty mask."""
    x0, x1, y0, y1 = _rects(cnt, h)
    w, hh = (x1 - x0).astype(np.float64), (y1 - y0).astype(np.float64)
    n = w * hh
    area = int(n.sum())
    if area == 0:
        return None
    cx = float((hh * w * (x0 + x1) / 2).sum()) / area
    cy = float((w * hh * (y0 + y1) / 2).sum()) / area
    # The hull's vertices are rectangle corners; per corner column only the lowest and
    # the highest corner can be one, so keep those two.
    xs = np.concatenate([x0, x0, x1, x1])
    ys = np.concatenate([y0, y1, y0, y1])
    lo = np.full(int(xs.max()) + 1, np.iinfo(np.int64).max)
    hi = np.full(len(lo), -1)
    np.minimum.at(lo, xs, ys)
    np.maximum.at(hi, xs, ys)
    cols = np.flatnonzero(hi >= 0)
    pts = np.stack([np.concatenate([cols, cols]), np.concatenate([lo[cols], hi[cols]])], axis=1)
    hull = ConvexHull(pts.astype(np.float64))
    return MaskGeometry(area, cx, cy, float(hull.volume))  # a 2-D hull's volume is its area


# -------------------------------------------------------------- corpus
@dataclasses.dataclass
class CorpusStats:
    """Mergeable counters of a set of images (see the module docstring)."""

    images: int = 0
    masks: int = 0
    empty_masks: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)
    per_image: dict = dataclasses.field(default_factory=dict)  # masks per image -> images
    size_hist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(SIZE_BINS, np.int64))
    concavity_hist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(CONCAVITY_BINS, np.int64))
    centre_hist: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((CENTRE_GRID, CENTRE_GRID), np.int64)
    )
    size_sum: float = 0.0
    concavity_sum: float = 0.0
    cx_sum: float = 0.0
    cy_sum: float = 0.0

    def skip(self, status: int) -> None:
        name = Status(status).counter
        self.skipped[name] = self.skipped.get(name, 0) + 1

    def add_image(self, ann: sa1b.Annotations) -> None:
        """Measure one image's masks; a bad RLE or size makes the whole image a skip."""
        h, w = int(ann.height), int(ann.width)
        if h <= 0 or w <= 0:
            return self.skip(Status.BAD_JSON)
        geos = []
        for (mh, mw), counts in zip(ann.sizes.tolist(), ann.counts):
            if (mh, mw) != (h, w):
                return self.skip(Status.RLE_SIZE_MISMATCH)
            try:
                cnt = rle.decode_counts(counts, h, w)
            except rle.RleError:
                return self.skip(Status.BAD_RLE)
            geos.append(mask_geometry(cnt, h))
        self.images += 1
        self.per_image[len(geos)] = self.per_image.get(len(geos), 0) + 1
        self.masks += len(geos)
        geos = [g for g in geos if g is not None]
        self.empty_masks += len(ann.counts) - len(geos)
        if not geos:
            return None
        area = np.array([g.area for g in geos], np.float64)
        size = np.sqrt(area / (h * w))
        conc = np.array([g.concavity for g in geos])
        cx = np.array([g.cx for g in geos]) / w
        cy = np.array([g.cy for g in geos]) / h
        self.size_hist += _hist(size, SIZE_BINS)
        self.concavity_hist += _hist(conc, CONCAVITY_BINS)
        ix = np.minimum((cx * CENTRE_GRID).astype(np.int64), CENTRE_GRID - 1)
        iy = np.minimum((cy * CENTRE_GRID).astype(np.int64), CENTRE_GRID - 1)
        np.add.at(self.centre_hist, (iy, ix), 1)
        self.size_sum += float(size.sum())
        self.concavity_sum += float(conc.sum())
        self.cx_sum += float(cx.sum())
        self.cy_sum += float(cy.sum())
        return None

    def merge(self, other: CorpusStats) -> CorpusStats:
        for f in ("images", "masks", "empty_masks", "size_sum", "concavity_sum", "cx_sum", "cy_sum"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for mine, theirs in ((self.skipped, other.skipped), (self.per_image, other.per_image)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.size_hist += other.size_hist
        self.concavity_hist += other.concavity_hist
        self.centre_hist += other.centre_hist
        return self

    def to_json(self, label: str, shards: int) -> dict:
        measured = self.masks - self.empty_masks
        counts = sorted(self.per_image.items())
        values = np.repeat([k for k, _ in counts], [v for _, v in counts]) if counts else np.zeros(0)
        mean = lambda s: s / measured if measured else None  # noqa: E731
        return {
            "label": label,
            "shards": shards,
            "images": self.images,
            "masks": self.masks,
            "empty_masks": self.empty_masks,
            "skipped": dict(sorted(self.skipped.items())),
            "masks_per_image": {
                "mean": float(values.mean()) if len(values) else None,
                "median": float(np.median(values)) if len(values) else None,
                "max": int(values.max()) if len(values) else None,
                "histogram": {str(k): v for k, v in counts},
                "paper_bins": _count_bins(self.per_image),
            },
            "relative_size": _hist_json(self.size_hist, mean(self.size_sum)),
            "concavity": _hist_json(self.concavity_hist, mean(self.concavity_sum)),
            "centre": {
                "mean_x": mean(self.cx_sum),
                "mean_y": mean(self.cy_sum),
                "grid": CENTRE_GRID,
                "histogram": self.centre_hist.tolist(),
            },
        }


def _hist(values: np.ndarray, bins: int) -> np.ndarray:
    idx = np.clip((values * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins)


def _count_bins(per_image: dict) -> dict:
    out = {}
    for lo, hi in COUNT_BINS:
        name = str(lo) if lo == hi else (f">{lo - 1}" if hi is None else f"{lo}-{hi}")
        out[name] = sum(v for k, v in per_image.items() if k >= lo and (hi is None or k <= hi))
    return out


def _quantile(hist: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of values binned uniformly over [0, 1] (linear inside a bin)."""
    total = hist.sum()
    if total == 0:
        return None
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, q * total))
    before = cum[i - 1] if i else 0
    frac = (q * total - before) / hist[i] if hist[i] else 0.0
    return float((i + frac) / len(hist))


def _hist_json(hist: np.ndarray, mean: float | None) -> dict:
    return {
        "mean": mean,
        "quantiles": {str(q): _quantile(hist, q) for q in QUANTILES},
        "bin_edges": np.linspace(0, 1, len(hist) + 1).round(6).tolist(),
        "histogram": hist.tolist(),
    }


def _chunk_stats(refs: Sequence[sa1b.RecordRef]) -> CorpusStats:
    """Counters of a chunk of records (runs in a worker process)."""
    out = CorpusStats()
    loader = sa1b.Loader()
    try:
        for ref in refs:
            if ref.status != Status.OK:
                out.skip(ref.status)
                continue
            try:
                _, payload = loader.load(ref)
            except (OSError, EOFError):
                out.skip(Status.TRUNCATED_MEMBER)
                continue
            try:
                ann = sa1b.parse_payload(payload, ref.payload_kind)
            except sa1b.PayloadError:
                out.skip(Status.BAD_JSON)
                continue
            out.add_image(ann)
    finally:
        loader.close()
    return out


def _chunks(shards: Sequence[str], size: int) -> Iterator[list[sa1b.RecordRef]]:
    """Records of every shard in chunks of ``size``; only annotations are read (jpeg=None)."""
    refs = (dataclasses.replace(r, jpeg=None) for s in shards for r in sa1b.iter_refs(s))
    while chunk := list(itertools.islice(refs, size)):
        yield chunk


def expand_shards(patterns: Iterable[str]) -> list[str]:
    """Shard globs/paths -> shards; a folder holding ``*.tar`` shards stands for them (else
    it is an extracted shard). Raises FileNotFoundError naming a pattern that matches nothing."""
    out = []
    for pattern in patterns:
        tars = os.path.join(pattern, "*.tar")
        if os.path.isdir(pattern) and glob.glob(tars):
            pattern = tars
        out += sa1b.resolve_shards(pattern)
    return sorted(set(out))


def corpus_stats(
    shards: Sequence[str], workers: int | None = None, chunk: int = 64, desc: str = "stats"
) -> CorpusStats:
    """One pass over ``shards`` in ``workers`` processes (1 = in this process)."""
    from tqdm import tqdm

    workers = (os.cpu_count() or 1) if workers is None else workers
    total = CorpusStats()
    with tqdm(desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr) as bar:
        if workers <= 1:
            results = map(_chunk_stats, _chunks(shards, chunk))
            for part, n in ((p, p.images + sum(p.skipped.values())) for p in results):
                total.merge(part)
                bar.update(n)
                bar.set_postfix(masks_per_image=f"{total.masks / max(total.images, 1):.1f}")
            return total
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap_unordered(_chunk_stats, _chunks(shards, chunk)):
                total.merge(part)
                bar.update(part.images + sum(part.skipped.values()))
                bar.set_postfix(masks_per_image=f"{total.masks / max(total.images, 1):.1f}")
    return total


# --------------------------------------------------------------- plots
def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_io.write_bytes(path, buf.getvalue())


def write_report(corpora: Sequence[dict], out: str) -> None:
    """``stats.json`` and the four PNGs of ``corpora`` (:meth:`CorpusStats.to_json` dicts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    atomic_io.write_json(os.path.join(out, "stats.json"), {"corpora": list(corpora)}, indent=1)
    n = len(corpora)
    labels = [c["label"] for c in corpora]

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(corpora[0]["masks_per_image"]["paper_bins"])
    x = np.arange(len(names))
    for i, c in enumerate(corpora):
        v = np.array(list(c["masks_per_image"]["paper_bins"].values()), np.float64)
        ax.bar(x + (i - (n - 1) / 2) * 0.8 / n, 100 * v / max(v.sum(), 1), 0.8 / n, label=c["label"])
    ax.set_xticks(x, names)
    ax.set(xlabel="masks per image", ylabel="% of images", title="Masks per image")
    ax.legend()
    _save(fig, os.path.join(out, "masks_per_image.png"))
    plt.close(fig)

    for key, xlabel, title, fname in (
        ("relative_size", "sqrt(mask area / image area)", "Relative mask size", "relative_size.png"),
        ("concavity", "1 - mask area / convex hull area", "Mask concavity", "concavity.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for c in corpora:
            h = np.asarray(c[key]["histogram"], np.float64)
            ax.stairs(100 * h / max(h.sum(), 1), c[key]["bin_edges"], label=c["label"])
        ax.set(xlabel=xlabel, ylabel="% of masks", title=title, xlim=(0, 1))
        ax.legend()
        _save(fig, os.path.join(out, fname))
        plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False, layout="constrained")
    for ax, c, label in zip(axes[0], corpora, labels):
        h = np.asarray(c["centre"]["histogram"], np.float64)
        ax.imshow(h / max(h.sum(), 1), extent=(0, 1, 1, 0), cmap="viridis")
        ax.set(title=f"{label}: mask centres", xlabel="x / width", ylabel="y / height")
    _save(fig, os.path.join(out, "centres.png"))
    plt.close(fig)


# ----------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", help="SA-1B shards: globs, tar files, folders")
    parser.add_argument("--out", required=True, help="output folder (stats.json and PNGs)")
    parser.add_argument("--compare", nargs="+", metavar="SHARDS", help="a second corpus, plotted beside")
    parser.add_argument("--labels", nargs="+", help="names of the corpora (default: their folder names)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--chunk", type=int, default=64, help="records per work item")
    a = parser.parse_args(argv)
    sets = [a.shards] + ([a.compare] if a.compare else [])
    labels = a.labels or [source_name(s[0]) for s in sets]
    if len(labels) != len(sets):
        parser.error(f"--labels: {len(sets)} corpora need {len(sets)} labels, got {len(labels)}")
    if len(set(labels)) != len(labels):
        labels = [f"{lab}_{i}" for i, lab in enumerate(labels)]
    if a.chunk < 1 or (a.workers is not None and a.workers < 1):
        parser.error("--chunk and --workers must be >= 1")
    try:
        shard_sets = [expand_shards(s) for s in sets]
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    corpora = []
    for shards, label in zip(shard_sets, labels):
        st = corpus_stats(shards, a.workers, a.chunk, desc=label)
        corpora.append(st.to_json(label, len(shards)))
        print(
            f"{label}: {st.images} images, {st.masks} masks, skipped {sum(st.skipped.values())}"
            + (f" ({st.skipped})" if st.skipped else ""),
            flush=True,
        )
    write_report(corpora, a.out)
    print(f"wrote {os.path.join(a.out, 'stats.json')} and 4 plots", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
