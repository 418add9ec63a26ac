"""SAM: image encoder + prompt encoder + mask decoder, and mask postprocessing (paper section 3).

``Sam`` is a Linen module whose methods are applied separately (the image
embedding is computed once and reused for many prompts)::

    emb = module.apply(variables, pixels, method=Sam.embed_images)
    masks, iou = module.apply(variables, emb, coords, labels, None, None, True,
                              method=Sam.decode)

Mask postprocessing is a pure function of this module; the input geometry and
pixel constants are in :mod:`sam_jax.geometry`, the variant table in
:mod:`sam_jax.modeling.variants`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling.common import Dtype
from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import PromptEncoder
from sam_jax.modeling.transformer import first_layer_image_projections

MASK_THRESHOLD = 0.0


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM variant (see ``sam_jax.modeling.variants.VARIANTS``)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    # Width of CLIP embeddings accepted as a text prompt token (0: none, as released).
    text_embed_dim: int = 0

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 at 1024 input)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (256 at 1024 input)."""
        return 4 * self.embedding_size

    def replace(self, **kw) -> SamConfig:
        return dataclasses.replace(self, **kw)


class Sam(nn.Module):
    """The Segment Anything model (three networks; see module docstring).

    ``drop_path_rate``, ``remat_policy`` and ``attention_impl`` tune the image
    encoder for training and speed; they do not change the parameters.
    """

    config: SamConfig = SamConfig()
    drop_path_rate: float = 0.0
    remat_policy: str = "none"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.image_encoder = ImageEncoderViT(
            embed_dim=c.encoder_embed_dim,
            depth=c.encoder_depth,
            num_heads=c.encoder_num_heads,
            global_attn_indexes=tuple(c.encoder_global_attn_indexes),
            img_size=c.image_size,
            patch_size=c.patch_size,
            out_chans=c.prompt_embed_dim,
            window_size=c.window_size,
            drop_path_rate=self.drop_path_rate,
            remat_policy=self.remat_policy,
            attention_impl=self.attention_impl,
            **kw,
        )
        grid = (c.embedding_size, c.embedding_size)
        self.prompt_encoder = PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=grid,
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
            text_embed_dim=c.text_embed_dim,
            **kw,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=c.prompt_embed_dim,
            transformer_depth=c.decoder_depth,
            transformer_heads=c.decoder_heads,
            transformer_mlp_dim=c.decoder_mlp_dim,
            **kw,
        )

    def embed_images(self, pixels: jax.Array, deterministic: bool = True) -> jax.Array:
        """``(B, S, S, 3)`` preprocessed pixels -> ``(B, S/16, S/16, 256)`` embeddings."""
        return self.image_encoder(pixels, deterministic)

    def decode(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array | None,
        point_labels: jax.Array | None,
        boxes: jax.Array | None,
        mask_inputs: jax.Array | None,
        multimask_output: bool,
        box_valid: jax.Array | None = None,
        mask_valid: jax.Array | None = None,
        text_embeddings: jax.Array | None = None,
        text_valid: jax.Array | None = None,
        image_cache: dict[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Encode prompts and decode masks (coordinates in the ``S x S`` input frame).

        Args:
          image_embeddings: ``(B, 64, 64, 256)``, or ``(1, 64, 64, 256)`` for all rows.
          point_coords ``(B, N, 2)`` XY, point_labels ``(B, N)``, boxes ``(B, 4)`` XYXY,
          mask_inputs ``(B, 256, 256)`` logits; each may be None.
          box_valid, mask_valid: optional ``(B,)`` per-row presence flags.
          text_embeddings: optional ``(B, D)`` CLIP embeddings (``config.text_embed_dim``);
          text_valid: optional ``(B,)`` presence flags for them.
          image_cache: optional :meth:`image_cache` of ``image_embeddings`` (unused with
            ``mask_inputs``, which change the image side).
        Returns:
          low-res mask logits ``(B, K, 256, 256)`` and IoU predictions ``(B, K)``.
        """
        sparse, token_valid, dense = self.prompt_encoder(
            point_coords, point_labels, boxes, mask_inputs, box_valid, mask_valid, text_embeddings, text_valid
        )
        if mask_inputs is None and image_embeddings.shape[0] == 1:
            # Every row has the same image and dense embedding: the decoder then computes
            # the image side of its first block once for all prompts.
            dense = dense[:1]
        if mask_inputs is not None:
            image_cache = None
        image_pe = image_cache.get("image_pe") if image_cache else None
        return self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe() if image_pe is None else image_pe[0],
            sparse,
            dense,
            multimask_output,
            token_valid,
            image_cache,
        )

    def image_cache(self, image_embeddings: jax.Array) -> dict[str, jax.Array]:
        """What every :meth:`decode` of ``(B, 64, 64, 256)`` embeddings without a mask
        prompt shares, computed once per image: the prompt-independent projections of
        the decoder's first block (``{name: (B, 4096, heads, d)}``) and ``"image_pe"``,
        the dense positional encoding ``(B, 64, 64, 256)``, the same for every image
        (its sines and cosines were a fifth of a one-point decode on the CPU)."""
        _, _, dense = self.prompt_encoder(None, None, None, None)
        b, h, w, e = image_embeddings.shape
        keys = (image_embeddings.astype(self.dtype) + dense.astype(self.dtype)).reshape(b, h * w, e)
        image_pe = self.prompt_encoder.get_dense_pe()
        key_pe = image_pe.reshape(1, h * w, e).astype(self.dtype)
        layer = self.variables["params"]["mask_decoder"]["transformer"]["layers_0"]
        cache = first_layer_image_projections(layer, keys, key_pe, self.config.decoder_heads, self.dtype)
        return dict(cache, image_pe=jnp.broadcast_to(image_pe, (b, *image_pe.shape)))

    def __call__(
        self,
        pixels,
        point_coords,
        point_labels,
        boxes=None,
        mask_inputs=None,
        multimask_output=True,
        deterministic=True,
    ):
        """Embed and decode in one call (one prompt row per image); used for init."""
        emb = self.embed_images(pixels, deterministic)
        text = None
        if self.config.text_embed_dim:
            text = jnp.ones((pixels.shape[0], self.config.text_embed_dim), jnp.float32)
        return self.decode(
            emb, point_coords, point_labels, boxes, mask_inputs, multimask_output, text_embeddings=text
        )


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of the last two axes, half-pixel centres, no antialiasing.

    Matches ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    shape = x.shape[:-2] + tuple(size)
    return jax.image.resize(x, shape, "bilinear", antialias=False)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix of a 1-D bilinear resize.

    Half-pixel centres, source positions clamped at the edges, no antialiasing:
    the weights of ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    # Positions in float32 arithmetic, as the reference kernel computes them.
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(f32)).astype(np.float64)
    m = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


@functools.lru_cache(maxsize=64)
def postprocess_matrix(low_res: int, image_size: int, input_len: int, original_len: int):
    """One axis of :func:`postprocess_masks` as a single ``(original_len, low_res)`` matrix."""
    up = bilinear_matrix(low_res, image_size)[:input_len]  # upsample, then crop the padding
    return (bilinear_matrix(input_len, original_len) @ up).astype(np.float32)


def postprocess_masks(
    low_res_masks: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int = 1024,
) -> jax.Array:
    """Low-res logits -> logits at the original image size.

    The reference upsamples to ``image_size``, crops the padding away
    (``input_size`` is the resized image inside the padded square) and resizes
    to ``original_size``. All three steps are linear and separable, so they are
    applied as one ``(H, r)`` and one ``(W, r)`` matrix: the same result with a
    fraction of the work (no ``image_size``-square intermediate).
    ``(..., r, r) -> (..., H, W)`` float32.
    """
    r = low_res_masks.shape[-1]
    rows = postprocess_matrix(r, image_size, int(input_size[0]), int(original_size[0]))
    cols = postprocess_matrix(r, image_size, int(input_size[1]), int(original_size[1]))
    return jnp.einsum(
        "hy,...yx,wx->...hw",
        rows,
        low_res_masks.astype(jnp.float32),
        cols,
        precision=jax.lax.Precision.HIGHEST,
    )


__all__ = ["Sam", "SamConfig", "postprocess_masks", "resize_bilinear", "MASK_THRESHOLD"]
