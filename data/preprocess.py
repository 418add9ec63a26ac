"""Per-sample preprocessing: SA-1B record -> fixed-shape numpy arrays.

Pure numpy/PIL (no TensorFlow), called from the tf.data map in
``data.pipeline`` and usable on its own.

Geometry (the one definition in ``sam_jax.geometry``, which imports without jax;
it matches the official ``ResizeLongestSide`` / ``SamPredictor``):

* the image ``(H, W)`` is resized so that its longest side is ``S``
  (``model_size``, 1024 by default): ``scale = S / max(H, W)``,
  ``(h', w') = (int(H*scale + 0.5), int(W*scale + 0.5))`` (``resized_shape``,
  stored as ``resized_hw``);
  bilinear with antialiasing (PIL; with ``jpeg_draft`` the JPEG is first
  decoded at the largest DCT reduction 1/2, 1/4 or 1/8 that keeps it at least
  ``(h', w')``, which is much faster and also antialiased);
* normalised with SAM's pixel mean and std (``PIXEL_MEAN``, ``PIXEL_STD``:
  RGB, 0-255), then zero-padded bottom/right to ``S x S``;
* coordinates are pixel coordinates of the resized image, the centre of pixel
  (row i, col j) being ``x = j, y = i`` (the convention of
  ``SamPredictor.predict(point_coords=...)`` after ``apply_coords``): an
  original-image point ``(x, y)`` maps to ``(x * w'/W, y * h'/H)``;
* ``points[k]``: the centre of a pixel drawn uniformly among the
  full-resolution foreground pixels of mask k, mapped as above;
* ``boxes[k]``: ``(x0, y0, x1, y1)`` = inclusive min/max column/row of the
  full-resolution mask (the box SAM's ``batched_mask_to_box`` gives), mapped
  as above;
* ``masks[k]``: the target at resolution ``R`` (``target_size``, default
  ``S // 4`` = 256 for 1024). The ``R x R`` grid covers the padded ``S x S``
  square (target pixel = ``S/R`` model pixels), the frame of SAM's low-res mask
  logits (the mask decoder predicts 256x256 logits for a 1024 input, and
  ``postprocess_masks`` upsamples them to the padded 1024 square before
  cropping), so the loss can compare logits and targets directly without
  upsampling 64 masks per image. Each target pixel takes the value of the
  full-resolution mask pixel under its centre (nearest neighbour), evaluated
  directly on the RLE runs (``data.rle``); pixels in the padding are 0.

Mask selection: masks that are empty or cover more than ``max_area_frac``
(90 %) of the image are dropped; up to ``K`` of the rest are drawn at random
(without replacement, random order) with a generator seeded by
``(seed, epoch, image_id)``: the draws depend neither on thread scheduling nor
on the reader (tar, folder and TFDS give identical samples), and change from
one epoch to the next.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from data import rle
from data.batch import empty_sample as empty_batch_sample
from data.sa1b import Annotations, PayloadError, parse_payload
from data.status import Status
from sam_jax.geometry import apply_boxes, apply_coords, normalize, resized_shape

__all__ = ["PreprocessConfig", "Decoded", "process_record", "decode_record", "draw_sample", "empty_sample"]


@dataclass(frozen=True)
class PreprocessConfig:
    """Static shapes and options of the per-sample transform.

    Attributes:
      model_size: S, side of the padded square model input.
      target_size: R, side of the mask targets (None -> S // 4).
      max_masks: K, masks per image (padded with ``mask_valid = False``).
      max_area_frac: masks covering more than this fraction are dropped.
      jpeg_draft: decode JPEGs at a reduced DCT scale when possible.
      seed: seed of the mask subset / point draws.
    """

    model_size: int = 1024
    target_size: int | None = None
    max_masks: int = 64
    max_area_frac: float = 0.9
    jpeg_draft: bool = True
    seed: int = 0

    @property
    def target(self) -> int:
        return self.target_size if self.target_size is not None else self.model_size // 4


def empty_sample(cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """All-zero sample with the static shapes of :mod:`data.batch` (used for skipped records)."""
    return empty_batch_sample(cfg.model_size, cfg.target, cfg.max_masks)


class _Skip(Exception):
    def __init__(self, status: Status):
        self.status = status


def _decode_image(jpeg: bytes, cfg: PreprocessConfig) -> tuple[np.ndarray, int, int]:
    """-> (resized uint8 (h', w', 3), H, W)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(jpeg))
        W, H = im.size
        nh, nw = resized_shape(H, W, cfg.model_size)
        if cfg.jpeg_draft and im.format == "JPEG":
            im.draft("RGB", (nw, nh))
        im = im.convert("RGB")  # forces the full decode: errors surface here
        if im.size != (nw, nh):
            im = im.resize((nw, nh), Image.BILINEAR)
        arr = np.asarray(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise _Skip(Status.CORRUPT_JPEG) from e
    return arr, H, W


def _target_axis(n_target: int, model_size: int, resized: int, original: int) -> np.ndarray:
    """Source indices of target pixels along one axis (only those inside the image)."""
    step = model_size / n_target  # model pixels per target pixel
    centres = (np.arange(n_target) + 0.5) * step  # in resized-image pixel units
    centres = centres[centres < resized]
    src = np.floor(centres * (original / resized)).astype(np.int64)
    return np.minimum(src, original - 1)


@dataclass(frozen=True)
class Decoded:
    """What a record gives before any random draw (:func:`decode_record`): the image
    resized to the model's longest side, uint8 ``(h', w', 3)``; the original size
    ``(H, W)``; every mask's runs (``counts``, split at ``offsets``) and the indices of
    the masks kept by the area filter (``usable``)."""

    image_id: int
    image: np.ndarray
    hw: tuple[int, int]
    counts: np.ndarray
    offsets: np.ndarray
    usable: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.counts.nbytes + self.offsets.nbytes + self.usable.nbytes


def _decode(jpeg: bytes, payload: bytes, payload_kind: int, cfg: PreprocessConfig) -> Decoded:
    try:
        ann: Annotations = parse_payload(payload, payload_kind)
    except PayloadError as e:
        raise _Skip(Status.BAD_JSON) from e
    if ann.jpeg is not None:
        jpeg = ann.jpeg
    img, H, W = _decode_image(jpeg, cfg)
    if (ann.height, ann.width) != (H, W) or (
        len(ann.sizes) and ((ann.sizes[:, 0] != H) | (ann.sizes[:, 1] != W)).any()
    ):
        raise _Skip(Status.RLE_SIZE_MISMATCH)
    if not ann.counts:
        raise _Skip(Status.NO_USABLE_MASK)

    # Runs of all masks (numpy, no pixel decode) for the area filter. Malformed
    # strings are caught here rather than handed to C code.
    try:
        cnt, offsets = rle.decode_counts_many(ann.counts, H, W)
    except rle.RleError as e:
        raise _Skip(Status.BAD_RLE) from e
    areas = rle.areas(cnt, offsets)
    usable = np.flatnonzero((areas > 0) & (areas <= cfg.max_area_frac * H * W))
    if usable.size == 0:
        raise _Skip(Status.NO_USABLE_MASK)
    return Decoded(ann.image_id, img, (H, W), cnt, offsets, usable)


def decode_record(
    jpeg: bytes, payload: bytes, payload_kind: int, status: int, cfg: PreprocessConfig
) -> tuple[Decoded | None, Status]:
    """The deterministic part of :func:`process_record` (the same for every epoch, so a
    pipeline may keep it): ``(decoded, OK)``, or ``(None, why)`` for a bad record."""
    if status != Status.OK:
        return None, Status(status)
    try:
        return _decode(jpeg, payload, payload_kind, cfg), Status.OK
    except _Skip as s:
        return None, s.status


def draw_sample(dec: Decoded, epoch: int, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The random part of :func:`process_record`: the masks, points and targets of
    ``epoch``'s draw (seeded by ``(cfg.seed, epoch, image_id)``) from a decoded record."""
    (H, W), (nh, nw) = dec.hw, dec.image.shape[:2]
    rng = np.random.default_rng([cfg.seed, epoch, dec.image_id & 0xFFFFFFFFFFFF, 0xDA7A])
    K = cfg.max_masks
    chosen = rng.permutation(dec.usable)[:K]

    cnt, offsets = dec.counts, dec.offsets
    runs = [rle.fg_runs(cnt[offsets[i] : offsets[i + 1]]) for i in chosen]

    out = empty_sample(cfg)
    S, R = cfg.model_size, cfg.target
    n = len(runs)
    out["boxes"][:n] = apply_boxes(rle.bboxes_xyxy(runs, H), (H, W), S)
    rows_cols = rle.sample_points(runs, H, rng)
    out["points"][:n] = apply_coords(rows_cols[:, ::-1], (H, W), S)  # (x, y) = (col, row)
    rows = _target_axis(R, S, nh, H)
    cols = _target_axis(R, S, nw, W)
    rle.sample_grid(runs, H, rows, cols, out=out["masks"][:n, : len(rows), : len(cols)])
    out["mask_valid"][:n] = True

    normalize(dec.image, out=out["image"][:nh, :nw])  # zero padding bottom/right
    out["resized_hw"][:] = (nh, nw)
    out["original_hw"][:] = (H, W)
    out["image_id"] = np.array(dec.image_id, np.int64)
    return out


def process_record(
    jpeg: bytes, payload: bytes, payload_kind: int, status: int, epoch: int, cfg: PreprocessConfig
) -> tuple[dict[str, np.ndarray], Status]:
    """Turn one raw record into a fixed-shape sample.

    Args:
      jpeg: JPEG bytes (ignored for TFDS payloads, which carry the image).
      payload: SA-1B JSON bytes or a serialised TFDS Example.
      payload_kind: ``data.sa1b.PAYLOAD_JSON`` or ``PAYLOAD_TFDS``.
      status: reader-level status; non-OK records are not decoded.
      epoch: epoch of the record (seeds the random draws with the image id).
      cfg: shapes and options.

    Returns:
      ``(sample, status)``. ``sample`` has the shapes of :func:`empty_sample`:
      image (S,S,3) f32, masks (K,R,R) u8, mask_valid (K,) bool, boxes (K,4)
      f32, points (K,2) f32, resized_hw (2,) i32, original_hw (2,) i32,
      image_id () i64. For a non-OK status it is all zeros (image_id -1).
      Never raises on bad data.
    """
    dec, st = decode_record(jpeg, payload, payload_kind, status, cfg)
    return (empty_sample(cfg) if dec is None else draw_sample(dec, epoch, cfg)), st
