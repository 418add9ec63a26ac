"""COCO compressed RLE, decoded to runs with numpy (no full-resolution masks).

SA-1B stores each mask as a COCO *compressed* RLE: ``{"size": [h, w],
"counts": str}``. The mask is flattened in column-major (Fortran) order, i.e.
linear index ``q = x * h + y`` for the pixel at row ``y``, column ``x``; the
counts are run lengths alternating background / foreground, starting with
background. The string packs each count in 5-bit groups (char - 48, bit 0x20 =
"more groups follow", bit 0x10 of the last group = sign), and counts after the
second one are stored as a difference to the count two positions earlier.

:func:`decode_counts` undoes that packing with vectorised numpy (same result as
pycocotools' ``rleFrString``; the tests check it against ``pycocotools``), so
the pipeline can compute everything it needs from the *runs* of the ``K``
sampled masks without materialising 64 full-resolution (e.g. 1500x2250) masks:

* :func:`area` - number of foreground pixels;
* :func:`bbox_xyxy` - ``(x0, y0, x1, y1)`` inclusive min/max column/row;
* :func:`sample_point` - a pixel drawn uniformly among the foreground pixels;
* :func:`sample_grid` - the mask sampled at a grid of rows x columns
  (nearest-neighbour resize), in ``O(runs * log(grid) + grid)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RleError", "decode_counts", "fg_runs", "area", "bbox_xyxy", "sample_point", "sample_grid"]


class RleError(ValueError):
    """A malformed RLE (bad characters, negative runs, wrong total length)."""


def decode_counts(counts: str | bytes, h: int, w: int) -> np.ndarray:
    """Decode a COCO compressed RLE string into run lengths.

    Args:
      counts: the ``counts`` string (str or ASCII bytes).
      h, w: mask size; the runs must sum to ``h * w``.

    Returns:
      (n,) int64 run lengths, alternating background/foreground, starting
      with background.

    Raises:
      RleError: on malformed input.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    b = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if b.size == 0:
        if h * w == 0:
            return np.zeros(0, np.int64)
        raise RleError("empty RLE counts")
    if (b < 0).any() or (b > 63).any():
        raise RleError("RLE counts contain characters outside the COCO alphabet")
    more = (b & 0x20) != 0
    if more[-1]:
        raise RleError("RLE counts end in the middle of a value")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    ngroups = ends - starts + 1
    if ngroups.max() > 12:
        raise RleError("RLE count too large")
    k = np.arange(b.size) - np.repeat(starts, ngroups)
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    neg = (b[ends] & 0x10) != 0
    x = np.where(neg, x | (np.int64(-1) << (5 * ngroups)), x)
    cnt = x.copy()
    cnt[1::2] = np.cumsum(x[1::2])
    cnt[2::2] = np.cumsum(x[2::2])
    if (cnt < 0).any():
        raise RleError("negative run length in RLE")
    if int(cnt.sum()) != h * w:
        raise RleError(f"RLE runs sum to {int(cnt.sum())}, expected h*w = {h * w}")
    return cnt


def fg_runs(cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground runs as half-open linear-index intervals ``[a, b)`` (non-empty only)."""
    ends = np.cumsum(cnt)
    a = ends[0::2][: len(cnt) // 2]
    b = ends[1::2]
    keep = b > a
    return a[keep], b[keep]


def area(cnt: np.ndarray) -> int:
    """Number of foreground pixels."""
    return int(cnt[1::2].sum())


def bbox_xyxy(a: np.ndarray, b: np.ndarray, h: int) -> tuple[int, int, int, int]:
    """Inclusive ``(x0, y0, x1, y1)`` of the foreground given runs ``[a, b)``; mask must be non-empty."""
    last = b - 1
    c0, c1 = a // h, last // h
    spans = c1 != c0
    r0 = np.where(spans, 0, a % h)
    r1 = np.where(spans, h - 1, last % h)
    return int(c0.min()), int(r0.min()), int(c1.max()), int(r1.max())


def sample_point(a: np.ndarray, b: np.ndarray, h: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(row, col)`` of a foreground pixel drawn uniformly; mask must be non-empty."""
    lens = b - a
    cum = np.cumsum(lens)
    u = int(rng.integers(int(cum[-1])))
    r = int(np.searchsorted(cum, u, side="right"))
    q = int(a[r]) + u - (int(cum[r - 1]) if r else 0)
    return q % h, q // h


def sample_grid(
    runs: list[tuple[np.ndarray, np.ndarray]],
    h: int,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """Sample several masks (given by runs) at the pixels ``rows x cols``.

    Args:
      runs: per mask, foreground runs ``(a, b)`` from :func:`fg_runs`.
      h: mask height (column stride of the linear index).
      rows: (nr,) non-decreasing source row indices.
      cols: (nc,) non-decreasing source column indices.

    Returns:
      (len(runs), nr, nc) uint8 0/1: ``out[k, i, j] = mask_k[rows[i], cols[j]]``.
    """
    n, nr, nc = len(runs), len(rows), len(cols)
    out_shape = (n, nr, nc)
    if n == 0 or nr == 0 or nc == 0:
        return np.zeros(out_shape, np.uint8)
    # Repeated rows/columns (upsampling) would break the sortedness of the
    # queries: sample unique ones, then expand.
    rows_u, inv_r = np.unique(rows, return_inverse=True)
    cols_u, inv_c = np.unique(cols, return_inverse=True)
    nr_u, nc_u = len(rows_u), len(cols_u)
    # Query linear indices, column-major like the RLE, hence sorted.
    q = (cols_u.astype(np.int64)[:, None] * h + rows_u.astype(np.int64)[None, :]).ravel()
    nq = q.size
    lo_all, hi_all = [], []
    for k, (a, b) in enumerate(runs):
        # Queries falling in [a, b) form the contiguous index range [lo, hi).
        lo_all.append(np.searchsorted(q, a, side="left") + k * nq)
        hi_all.append(np.searchsorted(q, b, side="left") + k * nq)
    lo = np.concatenate(lo_all)
    hi = np.concatenate(hi_all)
    total = n * nq
    diff = (
        np.bincount(lo, minlength=total + 1)[: total + 1] - np.bincount(hi, minlength=total + 1)[: total + 1]
    )
    inside = np.cumsum(diff[:total]) > 0
    # (n, nc, nr) in column-major query order -> (n, nr, nc).
    grid = inside.reshape(n, nc_u, nr_u).transpose(0, 2, 1).astype(np.uint8)
    if nr_u != nr:
        grid = grid[:, inv_r]
    if nc_u != nc:
        grid = grid[:, :, inv_c]
    return np.ascontiguousarray(grid)
