"""Training SAM with CLIP prompts (SAM paper, section 7.5 and appendix D.5).

For masks whose area exceeds ``min_mask_side``^2 px (at the model's input
resolution) the first interactive pass is prompted with the CLIP *image* embedding
of a crop around the mask, in place of the point or box; the correction passes
that follow keep it in the prompt. At inference the CLIP *text* embedding of a
phrase takes its place (same embedding space).

The crop of a mask (all on device, static shapes, :func:`clip_image_prompts`):

* its box, expanded about its centre by a random factor in ``crop_scale`` ([1, 2]),
  made square (side = the longer side), resampled bilinearly to CLIP's input size
  (336 for ViT-L/14@336px); outside the image is black;
* with probability ``zero_outside_prob`` (0.5) the pixels outside the mask are zeroed;
* with ``masked_attention`` the class token of CLIP's last layer attends only to the
  patches inside the mask (:class:`sam_jax.clip.model.VisionTransformer`).

The embedding is l2-normalised and has no gradient (CLIP is frozen). With
``masks_per_image > 0`` at most that many qualifying masks per image (drawn at
random) get the text-prompted pass; CLIP's cost is per prompted mask.

Why on device and not precomputed beside the shards: the crop factor and the
zeroing are drawn afresh at each step (precomputed embeddings freeze one draw per
mask), SA-1B's 1.1B masks would need about 1.7 TB of float16 ViT-L embeddings, and
the cost is bounded by ``masks_per_image``. ``python -m benchmarks.run text-prompt-cpu``
measures both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from sam_jax.clip.model import CLIP, CLIP_CONFIGS, ClipConfig, build_clip, l2_normalize
from sam_jax.clip.model import normalize as clip_normalize
from sam_jax.geometry import PIXEL_MEAN, PIXEL_STD


@dataclasses.dataclass(frozen=True)
class TextPromptConfig:
    """The ``text`` config section (see ``configs/base.py``)."""

    enabled: bool = False
    clip: str = "ViT-L/14@336px"  # a CLIP_CONFIGS name, or "custom"
    clip_custom: tuple = ()  # ClipConfig fields as (name, value) pairs
    clip_checkpoint: str = ""  # OpenAI .pt; "" = random weights (tests only)
    clip_seed: int = 0
    min_mask_side: float = 100.0  # masks with area > side^2 px qualify
    crop_scale: tuple = (1.0, 2.0)
    zero_outside_prob: float = 0.5
    masked_attention: bool = True
    masks_per_image: int = 0  # 0: every qualifying mask

    @classmethod
    def from_section(cls, section: Any) -> TextPromptConfig:
        kw = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section}
        if "clip_custom" in kw:
            kw["clip_custom"] = tuple(sorted(dict(kw["clip_custom"]).items()))
        if "crop_scale" in kw:
            kw["crop_scale"] = tuple(float(v) for v in kw["crop_scale"])
        return cls(**kw)

    def clip_config(self) -> ClipConfig:
        if self.clip == "custom":
            return ClipConfig(**dict(self.clip_custom))
        if self.clip not in CLIP_CONFIGS:
            raise ValueError(
                f"text.clip must be one of {sorted(CLIP_CONFIGS)} or 'custom', got {self.clip!r}"
            )
        return CLIP_CONFIGS[self.clip]


def load_frozen_clip(cfg: TextPromptConfig, dtype: Any = jnp.float32):
    """The CLIP the prompts come from: ``clip_checkpoint``, or random weights of ``clip``."""
    if cfg.clip_checkpoint:
        return build_clip(checkpoint=cfg.clip_checkpoint, dtype=dtype)
    return build_clip(cfg.clip_config(), dtype=dtype, seed=cfg.clip_seed)


def crop_boxes(key: jax.Array, boxes: jax.Array, scale: tuple[float, float]) -> jax.Array:
    """``(..., 4)`` XYXY mask boxes -> square crops ``(..., 3)`` as (cx, cy, side):
    side = longer box side (+1 px, inclusive boxes) x a factor uniform in ``scale``."""
    w = boxes[..., 2] - boxes[..., 0] + 1.0
    h = boxes[..., 3] - boxes[..., 1] + 1.0
    f = jax.random.uniform(key, w.shape, minval=scale[0], maxval=scale[1])
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    return jnp.stack([cx, cy, jnp.maximum(w, h) * f], axis=-1)


def _grid(crop: jax.Array, size: int, scale: float) -> tuple[jax.Array, jax.Array]:
    """Sample positions (y, x) ``(size, size)`` of a crop (cx, cy, side) given in pixels of
    the ``S`` frame, in a map whose pixels are ``scale`` input pixels (centre convention)."""
    t = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size - 0.5
    xs = (crop[0] + t * crop[2] + 0.5) / scale - 0.5
    ys = (crop[1] + t * crop[2] + 0.5) / scale - 0.5
    return jnp.meshgrid(ys, xs, indexing="ij")


def crop_and_resize(
    image: jax.Array, mask: jax.Array, crop: jax.Array, size: int, image_size: int
) -> tuple[jax.Array, jax.Array]:
    """One square crop: ``(S, S, 3)`` image and ``(R, R)`` mask -> ``(size, size, 3)``
    bilinear pixels (0 outside the image) and ``(size, size)`` bool mask."""
    y, x = _grid(crop, size, 1.0)
    pix = jnp.stack(
        [map_coordinates(image[..., c], [y, x], order=1, mode="constant", cval=0.0) for c in range(3)],
        axis=-1,
    )
    ym, xm = _grid(crop, size, image_size / mask.shape[0])
    m = map_coordinates(mask.astype(jnp.float32), [ym, xm], order=1, mode="constant", cval=0.0)
    return pix, m >= 0.5


def qualifying(masks: jax.Array, valid: jax.Array, min_side: float, image_size: int) -> jax.Array:
    """``(..., R, R)`` GT at low res -> ``(...)`` bool: valid and area > ``min_side``^2 px."""
    cell = (image_size / masks.shape[-1]) ** 2
    return valid & (masks.astype(jnp.float32).sum((-2, -1)) * cell > min_side**2)


def clip_image_prompts(
    clip: CLIP,
    clip_params: Any,
    key: jax.Array,
    images: jax.Array,
    masks: jax.Array,
    boxes: jax.Array,
    valid: jax.Array,
    cfg: TextPromptConfig,
    image_size: int,
) -> tuple[jax.Array, jax.Array]:
    """CLIP image embeddings of mask crops (see the module doc).

    Args:
      images: ``(B, S, S, 3)`` SAM-normalised pixels; masks ``(B, K, R, R)`` GT;
      boxes ``(B, K, 4)`` XYXY (S frame); valid ``(B, K)`` bool.
    Returns:
      ``(B*K, D)`` l2-normalised embeddings (zeros where unused) and ``(B*K,)`` bool:
      which masks get the text-prompted pass.
    """
    b, k = valid.shape
    size = clip.config.image_size
    k_sel, k_crop, k_zero = jax.random.split(key, 3)
    ok = qualifying(masks, valid, cfg.min_mask_side, image_size)  # (B, K)
    m = k if cfg.masks_per_image <= 0 else min(cfg.masks_per_image, k)
    score = jnp.where(ok, jax.random.uniform(k_sel, ok.shape), -1.0)
    idx = jnp.argsort(-score, axis=1)[:, :m]  # (B, m)
    chosen = jnp.take_along_axis(ok, idx, 1)
    sel_masks = jnp.take_along_axis(masks, idx[:, :, None, None], 1)
    sel_boxes = jnp.take_along_axis(boxes.astype(jnp.float32), idx[:, :, None], 1)
    crops = crop_boxes(k_crop, sel_boxes, cfg.crop_scale)  # (B, m, 3)
    rgb = images.astype(jnp.float32) * jnp.asarray(PIXEL_STD) + jnp.asarray(PIXEL_MEAN)
    one = jax.vmap(crop_and_resize, in_axes=(None, 0, 0, None, None))  # over a image's masks
    pix, cmask = jax.vmap(one, in_axes=(0, 0, 0, None, None))(rgb, sel_masks, crops, size, image_size)
    zero = jax.random.bernoulli(k_zero, cfg.zero_outside_prob, (b, m))
    pix = jnp.where(zero[..., None, None, None] & ~cmask[..., None], 0.0, pix)
    pix = clip_normalize(pix).reshape(b * m, size, size, 3)
    attn_mask = cmask.reshape(b * m, size, size) if cfg.masked_attention else None
    emb = clip.apply({"params": clip_params}, pix, attn_mask, method=CLIP.encode_image)
    emb = jax.lax.stop_gradient(l2_normalize(emb)).reshape(b, m, -1)
    emb = jnp.where(chosen[..., None], emb, 0.0)
    full = jnp.zeros((b, k, emb.shape[-1]), jnp.float32)
    full = full.at[jnp.arange(b)[:, None], idx].set(emb)
    used = jnp.zeros((b, k), bool).at[jnp.arange(b)[:, None], idx].set(chosen)
    return full.reshape(b * k, -1), used.reshape(b * k)
