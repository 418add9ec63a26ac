"""COCO compressed RLE, decoded to runs with numpy (no full-resolution masks).

SA-1B (SAM paper, section 5) stores each mask as a COCO
*compressed* RLE: ``{"size": [h, w], "counts": str}``. The mask is flattened in
column-major (Fortran) order, i.e. linear index ``q = x * h + y`` for the pixel
at row ``y``, column ``x``; the counts are run lengths alternating background /
foreground, starting with background. The string packs each count in 5-bit
groups (char - 48, bit 0x20 = "more groups follow", bit 0x10 of the last group
= sign), and counts after the third one are stored as a difference to the
count two positions earlier.

:func:`decode_counts_many` undoes that packing for all the masks of an image
at once with vectorised numpy (same result as pycocotools' ``rleFrString``; the
tests check it against ``pycocotools``), so the pipeline computes everything it
needs from the *runs* of the ``K`` sampled masks without materialising 64
full-resolution (e.g. 1500x2250) masks. Every helper works on several masks at
once, given as a list of foreground runs ``(a, b)`` (:func:`fg_runs`):

* :func:`areas` - number of foreground pixels of each mask;
* :func:`bboxes_xyxy` - ``(x0, y0, x1, y1)`` inclusive min/max column/row;
* :func:`sample_points` - a pixel drawn uniformly among each mask's foreground
  pixels (one ``rng.integers`` draw per mask, in order);
* :func:`sample_grid` - the masks sampled at a grid of rows x columns
  (nearest-neighbour resize) in ``O(runs * log(grid))`` plus one ``np.repeat``
  over the output.

The one-mask forms (:func:`decode_counts`, :func:`area`, :func:`bbox_xyxy`,
:func:`sample_point`) are these with a single mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "RleError",
    "decode_counts_many",
    "decode_counts",
    "fg_runs",
    "areas",
    "area",
    "bboxes_xyxy",
    "bbox_xyxy",
    "sample_points",
    "sample_point",
    "sample_grid",
]

Runs = tuple[np.ndarray, np.ndarray]
"""Foreground runs of one mask: half-open linear-index intervals ``[a, b)``, sorted."""


class RleError(ValueError):
    """A malformed RLE (bad characters, negative runs, wrong total length)."""


def _segment_index(offsets: np.ndarray) -> np.ndarray:
    """Position of every element inside its segment, for segments ``[offsets[i], offsets[i+1])``."""
    lens = np.diff(offsets)
    return np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lens)


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each segment ``values[offsets[i]:offsets[i+1]]`` (empty segments give 0)."""
    c = np.concatenate(([0], np.cumsum(values)))
    return c[offsets[1:]] - c[offsets[:-1]]


def decode_counts_many(counts: Sequence[str | bytes], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode the COCO compressed RLE strings of several ``h x w`` masks at once.

    Args:
      counts: N ``counts`` strings (str or ASCII bytes).
      h, w: mask size; each mask's runs must sum to ``h * w``.

    Returns:
      ``(cnt, offsets)``: ``cnt`` (total,) int64, the run lengths of all masks
      concatenated; mask ``i``'s runs are ``cnt[offsets[i]:offsets[i+1]]``
      (alternating background/foreground, starting with background);
      ``offsets`` (N + 1,) int64.

    Raises:
      RleError: a malformed string (the message names the first bad mask).
    """
    n = len(counts)
    raw = [c.encode("ascii", errors="replace") if isinstance(c, str) else bytes(c) for c in counts]
    lens = np.fromiter(map(len, raw), np.int64, n)
    str_end = np.cumsum(lens)

    def fail(pos: int, what: str):
        raise RleError(f"mask {int(np.searchsorted(str_end, pos, side='right'))}: {what}")

    hw = h * w
    if hw != 0 and (lens == 0).any():
        raise RleError(f"mask {int(np.flatnonzero(lens == 0)[0])}: empty RLE counts")
    b = np.frombuffer(b"".join(raw), np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, np.int64), np.zeros(n + 1, np.int64)
    bad = (b < 0) | (b > 63)
    if bad.any():
        fail(int(np.flatnonzero(bad)[0]), "RLE counts contain characters outside the COCO alphabet")
    more = (b & 0x20) != 0
    last = str_end[lens > 0] - 1
    if more[last].any():
        fail(int(last[more[last]][0]), "RLE counts end in the middle of a value")
    ends = np.flatnonzero(~more)  # last character of each value (never straddles two strings)
    starts = np.concatenate(([0], ends[:-1] + 1))
    ngroups = ends - starts + 1
    if ngroups.max() > 12:
        fail(int(ends[np.argmax(ngroups)]), "RLE count too large")
    k = np.arange(b.size) - np.repeat(starts, ngroups)
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    neg = (b[ends] & 0x10) != 0
    x = np.where(neg, x | (np.int64(-1) << (5 * ngroups)), x)
    # Values per mask, and the index j of each value inside its mask.
    nvals = _segment_sums(~more, np.concatenate(([0], str_end)))
    offsets = np.concatenate(([0], np.cumsum(nvals)))
    j = _segment_index(offsets)
    # cnt[j] = x[j] for j < 3, else x[j] + cnt[j - 2]: per mask, a cumulative sum
    # over the odd j and one over the even j >= 2 (cnt[0] stands alone).
    odd = (j & 1) == 1
    cnt = x.copy()  # right for j == 0
    for sel in (odd, ~odd & (j > 0)):
        cs = np.concatenate(([0], np.cumsum(np.where(sel, x, 0))))
        cnt[sel] = (cs[1:] - np.repeat(cs[offsets[:-1]], nvals))[sel]
    if (cnt < 0).any():
        i = int(np.searchsorted(offsets, np.flatnonzero(cnt < 0)[0], side="right")) - 1
        raise RleError(f"mask {i}: negative run length in RLE")
    sums = _segment_sums(cnt, offsets)
    wrong = sums != hw
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise RleError(f"mask {i}: RLE runs sum to {int(sums[i])}, expected h*w = {hw}")
    return cnt, offsets


def decode_counts(counts: str | bytes, h: int, w: int) -> np.ndarray:
    """Decode one COCO compressed RLE string into run lengths.

    Returns:
      (n,) int64 run lengths, alternating background/foreground, starting
      with background.

    Raises:
      RleError: on malformed input.
    """
    return decode_counts_many([counts], h, w)[0]


def fg_runs(cnt: np.ndarray) -> Runs:
    """Foreground runs as half-open linear-index intervals ``[a, b)`` (non-empty only)."""
    ends = np.cumsum(cnt)
    a = ends[0::2][: len(cnt) // 2]
    b = ends[1::2]
    keep = b > a
    return a[keep], b[keep]


def areas(cnt: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) int64 foreground pixels of each mask of :func:`decode_counts_many`'s ``(cnt, offsets)``."""
    return _segment_sums(np.where(_segment_index(offsets) & 1, cnt, 0), offsets)


def area(cnt: np.ndarray) -> int:
    """Number of foreground pixels."""
    return int(cnt[1::2].sum())


def _stack(runs: Sequence[Runs]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, offsets)``: the runs of several masks concatenated, mask ``k``'s being
    ``[offsets[k], offsets[k+1])``."""
    counts = np.fromiter((len(r[0]) for r in runs), np.int64, len(runs))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    if not len(runs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), offsets
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs]), offsets


def bboxes_xyxy(runs: Sequence[Runs], h: int) -> np.ndarray:
    """(N, 4) int64 inclusive ``(x0, y0, x1, y1)`` of each mask's foreground; every mask non-empty."""
    a, b, offsets = _stack(runs)
    if (np.diff(offsets) == 0).any():
        raise ValueError("bboxes_xyxy needs non-empty masks")
    last = b - 1
    c0, c1 = a // h, last // h
    spans = c1 != c0  # a run over a column boundary covers rows 0 .. h-1
    r0 = np.where(spans, 0, a % h)
    r1 = np.where(spans, h - 1, last % h)
    idx = offsets[:-1]
    return np.stack(
        [
            np.minimum.reduceat(c0, idx),
            np.minimum.reduceat(r0, idx),
            np.maximum.reduceat(c1, idx),
            np.maximum.reduceat(r1, idx),
        ],
        axis=1,
    )


def bbox_xyxy(a: np.ndarray, b: np.ndarray, h: int) -> tuple[int, int, int, int]:
    """Inclusive ``(x0, y0, x1, y1)`` of the foreground given runs ``[a, b)``; mask must be non-empty."""
    return tuple(int(v) for v in bboxes_xyxy([(a, b)], h)[0])


def sample_points(runs: Sequence[Runs], h: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) int64 ``(row, col)`` of one foreground pixel per mask, drawn uniformly.

    Draws ``rng.integers(area_k)`` once per mask, in order (every mask non-empty).
    """
    a, b, offsets = _stack(runs)
    lens = b - a
    cum = np.cumsum(lens)
    before = cum - lens  # pixels of all earlier runs
    totals = _segment_sums(lens, offsets)
    if (totals <= 0).any():
        raise ValueError("sample_points needs non-empty masks")
    u = np.fromiter((rng.integers(int(t)) for t in totals), np.int64, len(totals))
    t = before[offsets[:-1]] + u  # the u-th pixel of mask k, counted over all runs
    r = np.searchsorted(cum, t, side="right")
    q = a[r] + t - before[r]
    return np.stack([q % h, q // h], axis=1)


def sample_point(a: np.ndarray, b: np.ndarray, h: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(row, col)`` of a foreground pixel drawn uniformly; mask must be non-empty."""
    return tuple(int(v) for v in sample_points([(a, b)], h, rng)[0])


def sample_grid(
    runs: Sequence[Runs],
    h: int,
    rows: np.ndarray,
    cols: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sample several masks (given by runs) at the pixels ``rows x cols``.

    Args:
      runs: per mask, foreground runs ``(a, b)`` from :func:`fg_runs`.
      h: mask height (column stride of the linear index).
      rows: (nr,) non-decreasing source row indices.
      cols: (nc,) non-decreasing source column indices.
      out: optional (len(runs), nr, nc) uint8 array (or view) to write into.

    Returns:
      (len(runs), nr, nc) uint8 0/1: ``out[k, i, j] = mask_k[rows[i], cols[j]]``.
    """
    n, nr, nc = len(runs), len(rows), len(cols)
    if out is None:
        out = np.zeros((n, nr, nc), np.uint8)
    elif out.shape != (n, nr, nc):
        raise ValueError(f"out has shape {out.shape}, expected {(n, nr, nc)}")
    if n == 0 or nr == 0 or nc == 0:
        out[...] = 0
        return out
    # Repeated rows/columns (upsampling) would break the sortedness of the
    # queries: sample unique ones, then expand.
    rows_u, inv_r = np.unique(rows, return_inverse=True)
    cols_u, inv_c = np.unique(cols, return_inverse=True)
    nr_u, nc_u = len(rows_u), len(cols_u)
    # Query linear indices, column-major like the RLE, hence sorted.
    q = (cols_u.astype(np.int64)[:, None] * h + rows_u.astype(np.int64)[None, :]).ravel()
    nq = q.size
    a, b, offsets = _stack(runs)
    shift = np.repeat(np.arange(n, dtype=np.int64) * nq, np.diff(offsets))
    # Queries falling in the run [a, b) of mask k are [lo, hi) in the stacked
    # query order (mask k's queries at k*nq .. (k+1)*nq); runs are sorted and
    # disjoint, so the bounds of all masks are one non-decreasing sequence.
    lo = np.searchsorted(q, a, side="left") + shift
    hi = np.searchsorted(q, b, side="left") + shift
    keep = hi > lo
    bounds = np.empty(2 * int(keep.sum()) + 2, np.int64)
    bounds[0], bounds[-1] = 0, n * nq
    bounds[1:-1:2], bounds[2:-1:2] = lo[keep], hi[keep]
    values = (np.arange(len(bounds) - 1) & 1).astype(np.uint8)  # outside, inside, outside, ...
    inside = np.repeat(values, np.diff(bounds))
    # (n, nc, nr) in column-major query order -> (n, nr, nc).
    grid = inside.reshape(n, nc_u, nr_u).transpose(0, 2, 1)
    if nr_u != nr:
        grid = grid[:, inv_r]
    if nc_u != nc:
        grid = grid[:, :, inv_c]
    out[...] = grid
    return out
