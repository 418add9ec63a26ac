"""``SamPredictor``: embed an image once, then decode masks for many prompts.

A drop-in for ``segment_anything.SamPredictor`` (numpy in, numpy out):

* ``set_image(image HxWx3 uint8, image_format="RGB"|"BGR")`` resizes the long
  side to ``model.config.image_size`` (PIL bilinear on uint8, as the reference),
  normalises, zero-pads and computes the image embedding.
* ``predict(point_coords (N, 2), point_labels (N,), box (4,), mask_input
  (1, 256, 256), multimask_output, return_logits)`` -> ``(masks (C, H, W) bool,
  iou (C,) float32, low_res_logits (C, 256, 256) float32)``, prompts in
  original-image pixels.
* ``predict_batch`` decodes ``B`` prompts at once in the model's input frame
  -> ``(B, C, H, W)``, ``(B, C)``, ``(B, C, 256, 256)`` numpy arrays;
  ``predict_torch`` is the same, returning jax arrays left on the device (as the
  reference returns torch tensors). ``predict`` and both batched calls share one
  validation (:func:`check_prompts`).
* ``get_image_embedding()`` -> ``(1, 256, 64, 64)`` (NCHW, as the reference).
* Beyond the reference: ``set_images(images)`` embeds several images in one
  batched call; ``use_image(i)`` then selects which one prompts refer to.
* Text prompts (SAM paper section 7.5): ``SamPredictor(sam, clip=clip_model)``
  then ``predict(text="a dog")``, alone or with points/box; needs a SAM built with
  ``text_embed_dim`` equal to the CLIP embedding width.

Embedding and decoding are the inference core's jitted functions
(:class:`~sam_jax.sam_model.SamModel`), called with inputs of few distinct
shapes: every image is padded to ``S x S`` before the jit (so all image sizes
share one compilation), image batches are split into powers of two, and
prompt rows and points per row are padded up to powers of two with
``INVALID_LABEL`` slots, which the model excludes from attention exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.amg import bucket_size
from sam_jax.geometry import ResizeLongestSide, pad_to_square
from sam_jax.modeling.prompt_encoder import INVALID_LABEL, PAD_LABEL
from sam_jax.modeling.sam import MASK_THRESHOLD, postprocess_masks
from sam_jax.sam_model import SamModel
from sam_jax.sam_model import compile_counts as core_compile_counts

# ----------------------------------------------------------------------------- jitted pieces
# Embedding and decoding are the inference core's (``SamModel.embed_images`` / ``.decode``).


@functools.partial(jax.jit, static_argnames=("input_size", "original_size", "image_size", "return_logits"))
def _postprocess(
    low_res: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    return_logits: bool,
) -> jax.Array:
    masks = postprocess_masks(low_res, input_size, original_size, image_size)
    return masks if return_logits else masks > MASK_THRESHOLD


def compile_counts() -> dict[str, int]:
    """Number of compiled variants of each jitted function (for tests and tuning):
    the inference core's ``embed`` and ``decode``, and the predictor's ``postprocess``."""
    return dict(core_compile_counts(), postprocess=_postprocess._cache_size())


# ----------------------------------------------------------------------------- validation


def as_rgb_uint8(image: Any, image_format: str) -> np.ndarray:
    """Validate an image and return it as ``(H, W, 3)`` uint8 RGB."""
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 with values 0-255, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image_format == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def _finite(name: str, x: Any, shape_desc: str, ndim: int, last: int | None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric {shape_desc}: {e}") from None
    if a.ndim != ndim or (last is not None and a.shape[-1] != last):
        raise ValueError(f"{name} must have shape {shape_desc}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_labels(labels: Any, shape: tuple[int, ...], allowed: Sequence[int]) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != shape:
        raise ValueError(f"point_labels must have shape {shape} to match point_coords, got {lab.shape}")
    if lab.size and (
        not np.issubdtype(lab.dtype, np.number)
        or np.any(lab != np.round(lab))
        or not np.all(np.isin(lab, allowed))
    ):
        raise ValueError(f"point_labels must be in {sorted(allowed)}, got {np.unique(lab)}")
    return lab.astype(np.int32)


def _check_boxes(boxes: np.ndarray) -> None:
    if np.any(boxes[..., 2] < boxes[..., 0]) or np.any(boxes[..., 3] < boxes[..., 1]):
        raise ValueError(f"box must be XYXY with x1 >= x0 and y1 >= y0, got {boxes.tolist()}")


def check_prompts(
    point_coords: Any, point_labels: Any, boxes: Any, mask_input: Any, low_res_size: int, batched: bool
):
    """Validate the prompts of :meth:`SamPredictor.predict` (``batched=False``: coords
    ``(N, 2)``, labels ``(N,)`` in {0, 1}, box ``(4,)``, mask ``(1, r, r)``) or of
    :meth:`SamPredictor.predict_batch` (``batched=True``: a leading ``B`` on each, labels
    also ``PAD_LABEL`` and ``INVALID_LABEL``).

    Returns ``(coords float64, labels int32, boxes float64, masks float64)``, each None
    when not given, with a leading batch axis (of 1 when not ``batched``).
    Raises ``ValueError`` naming the offending argument.
    """
    lead, extra = ("B, ", 1) if batched else ("", 0)
    box_name = "boxes" if batched else "box"
    coords = labels = bx = masks = None
    if point_coords is not None:
        if point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        coords = _finite("point_coords", point_coords, f"({lead}N, 2)", 2 + extra, 2)
        allowed = (1, 0, PAD_LABEL, INVALID_LABEL) if batched else (0, 1)
        labels = _check_labels(point_labels, coords.shape[:-1], allowed)
    elif point_labels is not None:
        raise ValueError("point_labels given without point_coords")
    if boxes is not None:
        bx = _finite(box_name, boxes, f"({lead}4)", 1 + extra, 4)
        _check_boxes(bx)
    if mask_input is not None:
        r = low_res_size
        want = f"({lead}1, {r}, {r})"
        masks = _finite("mask_input", mask_input, want, 3 + extra, None)
        if masks.shape[extra:] != (1, r, r):
            raise ValueError(f"mask_input must have shape {want}, got {masks.shape}")
    if not batched:
        coords, labels, bx, masks = (None if x is None else x[None] for x in (coords, labels, bx, masks))
    rows = {len(x) for x in (coords, bx, masks) if x is not None}
    if len(rows) > 1:
        raise ValueError(f"prompt batch sizes differ: {sorted(rows)}")
    return coords, labels, bx, masks


class SamPredictor:
    """Prompted mask prediction on one (or a few) embedded images; see the module doc.

    Attributes:
      model: the :class:`SamModel`.
      transform: :class:`ResizeLongestSide` to ``model.config.image_size``.
      original_size, input_size: ``(H, W)`` of the current image before and after resizing.
      is_image_set: whether an image has been embedded.
    """

    def __init__(self, model: SamModel, clip: Any = None) -> None:
        """``clip``: a :class:`sam_jax.clip.ClipModel` for text prompts (optional)."""
        self.model = model
        self.clip = clip
        self.transform = ResizeLongestSide(model.config.image_size)
        self.reset_image()

    # ------------------------------------------------------------------ images

    def reset_image(self) -> None:
        """Forget the current image(s)."""
        self.is_image_set = False
        self.features: jax.Array | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._image_cache: dict[str, jax.Array] | None = None
        self._images: list[tuple[jax.Array, tuple[int, int], tuple[int, int], dict[str, jax.Array]]] = []

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed ``image`` ``(H, W, 3)`` uint8 (grayscale and RGBA are converted)."""
        self.set_images([image], image_format)

    def set_images(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> None:
        """Embed several images in batched calls; the first becomes current (see
        :meth:`use_image`)."""
        if len(images) == 0:
            raise ValueError("set_images needs at least one image")
        s = self.model.config.image_size
        rgb = [as_rgb_uint8(im, image_format) for im in images]
        resized = [self.transform.apply_image(im) for im in rgb]
        batch = np.stack([pad_to_square(r, s) for r in resized])
        sizes = np.array([r.shape[:2] for r in resized], np.int32)
        embeddings, caches = [], []
        start = 0
        while start < len(batch):  # chunks of powers of two: no padding, few shapes
            n = 1 << ((len(batch) - start).bit_length() - 1)
            n = min(n, 8)
            emb = self.model.embed_images(batch[start : start + n], sizes[start : start + n])
            cache = self.model.image_cache(emb)  # each decode of these images starts from it
            embeddings.extend(emb[i : i + 1] for i in range(n))
            caches.extend(jax.tree.map(lambda x, i=i: x[i : i + 1], cache) for i in range(n))
            start += n
        self.reset_image()
        self._images = [
            (e, tuple(int(v) for v in sz), im.shape[:2], c)
            for e, sz, im, c in zip(embeddings, sizes, rgb, caches)
        ]
        self.use_image(0)

    def use_image(self, index: int) -> None:
        """Make image ``index`` of the last :meth:`set_images` call the current one."""
        if not 0 <= index < len(self._images):
            raise ValueError(f"image index {index} out of range: {len(self._images)} images set")
        self.features, self.input_size, self.original_size, self._image_cache = self._images[index]
        self.is_image_set = True

    @property
    def num_images(self) -> int:
        return len(self._images)

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, ``(1, 256, 64, 64)`` float32 (NCHW)."""
        self._require_image()
        return np.asarray(jnp.transpose(self.features, (0, 3, 1, 2)), np.float32)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise ValueError("no image set: call set_image(...) before predicting")

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt in original-image pixels.

        Args:
          point_coords: ``(N, 2)`` XY, with point_labels ``(N,)`` (1 fg, 0 bg).
          box: ``(4,)`` XYXY. mask_input: ``(1, 256, 256)`` low-res logits.
          text: a phrase, embedded by the attached CLIP model (see the module doc).
        Returns:
          masks ``(C, H, W)`` bool (float32 logits if ``return_logits``), iou ``(C,)``,
          low-res logits ``(C, 256, 256)``; ``C`` is 3 with ``multimask_output`` else 1.
        """
        self._require_image()
        coords, labels, boxes, masks = check_prompts(
            point_coords, point_labels, box, mask_input, self.model.config.low_res_size, False
        )
        if coords is not None:
            coords = self.transform.apply_coords(coords, self.original_size)
        if boxes is not None:
            boxes = self.transform.apply_boxes(boxes, self.original_size)
        text_emb = None if text is None else self.text_embedding(text)
        out = self._predict(coords, labels, boxes, masks, multimask_output, return_logits, text_emb)
        return tuple(np.asarray(x)[0] for x in out)  # index on the host: no device op

    def text_embedding(self, text: str) -> np.ndarray:
        """``(1, D)`` CLIP text embedding of ``text`` for a text prompt."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        if self.clip is None:
            raise ValueError(
                "text prompts need a CLIP model: SamPredictor(sam, clip=build_clip("
                "checkpoint='ViT-L-14-336px.pt'))"
            )
        want = self.model.config.text_embed_dim
        if want != self.clip.config.embed_dim:
            raise ValueError(
                f"this SAM takes no text prompt of width {self.clip.config.embed_dim} "
                f"(its text_embed_dim is {want}; a SAM trained with text prompts is needed)"
            )
        return np.asarray(self.clip.embed_text([text]), np.float32)

    def predict_batch(
        self,
        point_coords: Any | None,
        point_labels: Any | None,
        boxes: Any | None = None,
        mask_input: Any | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for ``B`` prompts at once, coordinates in the model's input frame
        (already resized with :attr:`transform`).

        Args:
          point_coords: ``(B, N, 2)`` XY; point_labels ``(B, N)``: 1 fg, 0 bg, -1
            the reference's padding point, ``INVALID_LABEL`` (-2) an absent slot
            (for point sets of different lengths).
          boxes: ``(B, 4)`` XYXY. mask_input: ``(B, 1, 256, 256)`` logits.
        Returns:
          masks ``(B, C, H, W)``, iou ``(B, C)``, low-res logits ``(B, C, 256, 256)``.
        """
        out = self.predict_torch(
            point_coords, point_labels, boxes, mask_input, multimask_output, return_logits
        )
        return tuple(np.asarray(x) for x in out)

    def predict_torch(
        self,
        point_coords: Any | None,
        point_labels: Any | None,
        boxes: Any | None = None,
        mask_input: Any | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        upsample: bool = True,
    ) -> tuple[jax.Array | None, jax.Array, jax.Array]:
        """:meth:`predict_batch` returning jax arrays left on the device (as the official
        ``predict_torch`` returns torch tensors); the automatic mask generator decodes
        through it. ``upsample=False`` skips the masks at the original size (returned
        as None): :meth:`postprocess` then upsamples only the low-res rows wanted."""
        self._require_image()
        coords, labels, boxes, masks = check_prompts(
            point_coords, point_labels, boxes, mask_input, self.model.config.low_res_size, True
        )
        return self._predict(coords, labels, boxes, masks, multimask_output, return_logits, upsample=upsample)

    def postprocess(self, low_res: jax.Array, return_logits: bool = False) -> jax.Array:
        """Low-res logits ``(..., r, r)`` of the current image -> masks ``(..., H, W)`` at its
        original size (bool, or float32 logits with ``return_logits``), left on the device."""
        self._require_image()
        return _postprocess(
            low_res, self.input_size, self.original_size, self.model.config.image_size, bool(return_logits)
        )

    def _predict(
        self, coords, labels, boxes, masks, multimask_output, return_logits, text=None, upsample=True
    ):
        """Pad the (validated, input-frame) prompts to buckets, decode, postprocess."""
        dtype = self.model.module.dtype
        for name, x in (("point_coords", coords), ("box", boxes), ("mask_input", masks)):
            with np.errstate(over="ignore"):
                fits = x is None or np.all(np.isfinite(np.asarray(x, np.float32).astype(dtype)))
            if not fits:
                raise ValueError(
                    f"{name} has values too large for the model's "
                    f"{np.dtype(dtype).name} computation (finite, but beyond "
                    f"{float(jnp.finfo(dtype).max):.3g} after resizing)"
                )
        b = next((len(x) for x in (coords, boxes, masks) if x is not None), 1)
        rows = bucket_size(b)
        if coords is None and (boxes is not None or text is not None):
            # Box without points: all-absent point slots keep one compiled shape. Text
            # alone: also the "no point" padding token, as in training's text pass.
            coords = np.zeros((b, 0, 2))
            labels = np.zeros((b, 0), np.int32)
        if coords is not None:
            n = bucket_size(coords.shape[1])
            pc = np.zeros((rows, n, 2), np.float32)
            pl = np.full((rows, n), INVALID_LABEL, np.int32)
            pc[:b, : coords.shape[1]] = coords
            pl[:b, : coords.shape[1]] = labels
            coords, labels = pc, pl
        if boxes is not None:
            boxes = np.pad(np.asarray(boxes, np.float32), ((0, rows - b), (0, 0)))
        if masks is not None:
            masks = np.pad(np.asarray(masks, np.float32)[:, 0], ((0, rows - b), (0, 0), (0, 0)))
        if text is not None:
            text = np.broadcast_to(np.asarray(text, np.float32), (rows, text.shape[-1]))
        low, iou = self.model.decode(
            self.features,
            coords,
            labels,
            boxes,
            masks,
            bool(multimask_output),
            text_embeddings=text,
            image_cache=self._image_cache,  # Sam.decode drops it when a mask prompt is given
        )
        if b < rows:  # (each device op costs a dispatch: none when nothing is padded)
            low, iou = low[:b], iou[:b]
        if low.dtype != jnp.float32:
            low, iou = low.astype(jnp.float32), iou.astype(jnp.float32)
        return (self.postprocess(low, return_logits) if upsample else None), iou, low


__all__ = ["SamPredictor", "ResizeLongestSide", "as_rgb_uint8", "check_prompts", "compile_counts"]
