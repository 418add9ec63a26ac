"""``SamPredictor``: embed an image once, then decode masks for many prompts.

A drop-in for ``segment_anything.SamPredictor`` (numpy in, numpy out):

* ``set_image(image HxWx3 uint8, image_format="RGB"|"BGR")`` resizes the long
  side to ``model.config.image_size`` (PIL bilinear on uint8, as the reference),
  normalises, zero-pads and computes the image embedding.
* ``predict(point_coords (N, 2), point_labels (N,), box (4,), mask_input
  (1, 256, 256), multimask_output, return_logits)`` -> ``(masks (C, H, W) bool,
  iou (C,) float32, low_res_logits (C, 256, 256) float32)``, prompts in
  original-image pixels.
* ``predict_batch`` (alias ``predict_torch``) decodes ``B`` prompts at once in
  the model's input frame -> ``(B, C, H, W)``, ``(B, C)``, ``(B, C, 256, 256)``.
* ``get_image_embedding()`` -> ``(1, 256, 64, 64)`` (NCHW, as the reference).
* Beyond the reference: ``set_images(images)`` embeds several images in one
  batched call; ``use_image(i)`` then selects which one prompts refer to.
* Text prompts (SAM paper section 7.5): ``SamPredictor(sam, clip=clip_model)``
  then ``predict(text="a dog")``, alone or with points/box; needs a SAM built with
  ``text_embed_dim`` equal to the CLIP embedding width.

Embedding and decoding are separate jitted functions whose inputs have few
distinct shapes: every image is padded to ``S x S`` before the jit (so all image
sizes share one compilation), image batches are split into powers of two, and
prompt rows and points per row are padded up to powers of two with
``INVALID_LABEL`` slots, which the model excludes from attention exactly.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sam_jax.amg import bucket_size
from sam_jax.build_sam import SamModel
from sam_jax.modeling.prompt_encoder import INVALID_LABEL, PAD_LABEL
from sam_jax.modeling.sam import (MASK_THRESHOLD, Sam, normalize,
                                  postprocess_masks, resized_shape)


class ResizeLongestSide:
    """Resize images, points and boxes so the image's long side is ``target_length``.

    The resized shape is ``(int(h*s + 0.5), int(w*s + 0.5))`` with
    ``s = target_length / max(h, w)``.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return resized_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` uint8, PIL bilinear."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(..., 2)`` XY in an image of ``original_size`` (H, W) -> resized frame (float64)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=np.float64, copy=True)
        coords[..., 0] *= new_w / old_w
        coords[..., 1] *= new_h / old_h
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(..., 4)`` XYXY boxes -> ``(B, 4)`` in the resized frame (float64)."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)


# ----------------------------------------------------------------------------- jitted pieces

@functools.partial(jax.jit, static_argnames=("module",))
def _embed(module: Sam, params: Any, images: jax.Array, sizes: jax.Array) -> jax.Array:
    """``(B, S, S, 3)`` uint8 (image top-left, rest arbitrary), ``(B, 2)`` valid (h, w)
    -> ``(B, S/16, S/16, 256)``: normalise, zero the padding, encode."""
    s = images.shape[1]
    x = normalize(images)
    inside = ((jnp.arange(s)[None, :, None] < sizes[:, 0, None, None])
              & (jnp.arange(s)[None, None, :] < sizes[:, 1, None, None]))
    x = jnp.where(inside[..., None], x, 0.0)
    return module.apply({"params": params}, x, method=Sam.embed_images)


@functools.partial(jax.jit, static_argnames=("module", "multimask_output"))
def _decode(module: Sam, params: Any, emb: jax.Array, coords: jax.Array | None,
            labels: jax.Array | None, boxes: jax.Array | None, masks: jax.Array | None,
            multimask_output: bool, text: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return module.apply({"params": params}, emb, coords, labels, boxes, masks,
                        multimask_output, text_embeddings=text, method=Sam.decode)


@functools.partial(jax.jit, static_argnames=("input_size", "original_size", "image_size",
                                             "return_logits"))
def _postprocess(low_res: jax.Array, input_size: tuple[int, int],
                 original_size: tuple[int, int], image_size: int,
                 return_logits: bool) -> jax.Array:
    masks = postprocess_masks(low_res, input_size, original_size, image_size)
    return masks if return_logits else masks > MASK_THRESHOLD


def compile_counts() -> dict[str, int]:
    """Number of compiled variants of each jitted function (for tests and tuning)."""
    return {"embed": _embed._cache_size(), "decode": _decode._cache_size(),
            "postprocess": _postprocess._cache_size()}


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
        raise ValueError(f"point_labels must have shape {shape} to match point_coords, "
                         f"got {lab.shape}")
    if lab.size and (not np.issubdtype(lab.dtype, np.number) or np.any(lab != np.round(lab))
                     or not np.all(np.isin(lab, allowed))):
        raise ValueError(f"point_labels must be in {sorted(allowed)}, got {np.unique(lab)}")
    return lab.astype(np.int32)


def _check_boxes(boxes: np.ndarray) -> None:
    if np.any(boxes[..., 2] < boxes[..., 0]) or np.any(boxes[..., 3] < boxes[..., 1]):
        raise ValueError(f"box must be XYXY with x1 >= x0 and y1 >= y0, got {boxes.tolist()}")


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
        self._images: list[tuple[jax.Array, tuple[int, int], tuple[int, int]]] = []

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
        batch = np.zeros((len(rgb), s, s, 3), np.uint8)
        for i, r in enumerate(resized):
            batch[i, : r.shape[0], : r.shape[1]] = r
        sizes = np.array([r.shape[:2] for r in resized], np.int32)
        embeddings = []
        start = 0
        while start < len(batch):  # chunks of powers of two: no padding, few shapes
            n = 1 << ((len(batch) - start).bit_length() - 1)
            n = min(n, 8)
            emb = _embed(self.model.module, self.model.params, batch[start:start + n],
                         sizes[start:start + n])
            embeddings.extend(emb[i:i + 1] for i in range(n))
            start += n
        self.reset_image()
        self._images = [(e, tuple(int(v) for v in sz), im.shape[:2])
                        for e, sz, im in zip(embeddings, sizes, rgb)]
        self.use_image(0)

    def use_image(self, index: int) -> None:
        """Make image ``index`` of the last :meth:`set_images` call the current one."""
        if not 0 <= index < len(self._images):
            raise ValueError(f"image index {index} out of range: {len(self._images)} images set")
        self.features, self.input_size, self.original_size = self._images[index]
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
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            pc = _finite("point_coords", point_coords, "(N, 2)", 2, 2)
            labels = _check_labels(point_labels, pc.shape[:1], (0, 1))[None]
            coords = self.transform.apply_coords(pc, self.original_size)[None]
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if box is not None:
            b = _finite("box", box, "(4,)", 1, 4)
            _check_boxes(b)
            boxes = self.transform.apply_boxes(b, self.original_size)
        if mask_input is not None:
            r = self.model.config.low_res_size
            mi = _finite("mask_input", mask_input, f"(1, {r}, {r})", 3, None)
            if mi.shape != (1, r, r):
                raise ValueError(f"mask_input must have shape (1, {r}, {r}), got {mi.shape}")
            masks = mi[None]
        text_emb = None if text is None else self.text_embedding(text)
        out = self._predict(coords, labels, boxes, masks, multimask_output, return_logits,
                            text_emb)
        return tuple(x[0] for x in out)

    def text_embedding(self, text: str) -> np.ndarray:
        """``(1, D)`` CLIP text embedding of ``text`` for a text prompt."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        if self.clip is None:
            raise ValueError("text prompts need a CLIP model: SamPredictor(sam, clip=build_clip("
                             "checkpoint='ViT-L-14-336px.pt'))")
        want = self.model.config.text_embed_dim
        if want != self.clip.config.embed_dim:
            raise ValueError(
                f"this SAM takes no text prompt of width {self.clip.config.embed_dim} "
                f"(its text_embed_dim is {want}; a SAM trained with text prompts is needed)")
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
        self._require_image()
        coords = labels = bx = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            coords = _finite("point_coords", point_coords, "(B, N, 2)", 3, 2)
            labels = _check_labels(point_labels, coords.shape[:2],
                                   (1, 0, PAD_LABEL, INVALID_LABEL))
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if boxes is not None:
            bx = _finite("boxes", boxes, "(B, 4)", 2, 4)
            _check_boxes(bx)
        if mask_input is not None:
            r = self.model.config.low_res_size
            mi = _finite("mask_input", mask_input, f"(B, 1, {r}, {r})", 4, None)
            if mi.shape[1:] != (1, r, r):
                raise ValueError(f"mask_input must have shape (B, 1, {r}, {r}), got {mi.shape}")
            masks = mi
        rows = {len(x) for x in (coords, bx, masks) if x is not None}
        if len(rows) > 1:
            raise ValueError(f"prompt batch sizes differ: {sorted(rows)}")
        return self._predict(coords, labels, bx, masks, multimask_output, return_logits)

    predict_torch = predict_batch

    def _predict(self, coords, labels, boxes, masks, multimask_output, return_logits,
                 text=None):
        """Pad the (validated, input-frame) prompts to buckets, decode, postprocess."""
        b = next((len(x) for x in (coords, boxes, masks) if x is not None), 1)
        rows = bucket_size(b)
        if coords is None and boxes is not None:
            # Box without points: all-absent point slots keep one compiled shape.
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
        low, iou = _decode(self.model.module, self.model.params, self.features, coords, labels,
                           boxes, masks, bool(multimask_output), text)
        low, iou = low[:b].astype(jnp.float32), iou[:b].astype(jnp.float32)
        out = _postprocess(low, self.input_size, self.original_size,
                           self.model.config.image_size, bool(return_logits))
        return np.asarray(out), np.asarray(iou), np.asarray(low)


__all__ = ["SamPredictor", "ResizeLongestSide", "as_rgb_uint8", "compile_counts"]
