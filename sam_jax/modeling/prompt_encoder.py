"""The prompt encoder: points, boxes and masks to sparse and dense embeddings.

Sparse prompts (points, box corners) become 256-d tokens: a random Fourier
encoding of the position plus a learned embedding of the prompt's kind. A mask
prompt (low-res logits) is downscaled by a small conv net to a dense
``(64, 64, 256)`` map; without one a learned ``no_mask_embed`` is broadcast.

Point labels: ``1`` foreground, ``0`` background, ``-1`` the reference's
"not a point" padding token, and ``INVALID_LABEL`` (-2), a slot that holds no
token at all. Invalid slots let callers use static, padded prompt arrays (for
jit and batching) with results identical to calling with fewer points: their
tokens are excluded from attention by the returned validity mask.

Text prompts (paper section 7.5): with ``text_embed_dim > 0`` a CLIP embedding
``(B, D)`` (l2-normalised here) becomes one more sparse token through a learned
linear projection ``text_proj`` (D -> E). The default ``text_embed_dim = 0`` has no
such parameter, so the released checkpoints load and behave unchanged.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import Dtype, conv, dense, gelu, layer_norm, partitioned

POSITIVE_LABEL = 1
NEGATIVE_LABEL = 0
PAD_LABEL = -1
INVALID_LABEL = -2


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D positions.

    The matrix ``G`` (2, num_pos_feats) is drawn once (normal, std ``scale``)
    and never trained (gradients are stopped). ``(..., 2) in [0, 1] -> (..., 2F)``.
    """

    num_pos_feats: int = 128
    scale: float = 1.0

    def setup(self):
        self.positional_encoding_gaussian_matrix = self.param(
            "positional_encoding_gaussian_matrix",
            partitioned(nn.initializers.normal(self.scale), (None, None)),
            (2, self.num_pos_feats),
            jnp.float32,
        )

    def encode(self, coords: jax.Array) -> jax.Array:
        """``(..., 2)`` normalised x, y -> ``(..., 2 * num_pos_feats)`` float32."""
        g = jax.lax.stop_gradient(self.positional_encoding_gaussian_matrix)
        c = (2.0 * coords.astype(jnp.float32) - 1.0) @ g
        c = 2.0 * math.pi * c
        return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)

    def dense(self, size: tuple[int, int]) -> jax.Array:
        """Encoding of every cell centre of an ``(h, w)`` grid: ``(h, w, 2F)``."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1)  # (h, w, 2) as (x, y)
        return self.encode(grid)

    def with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel ``(x, y)`` in an ``(H, W)`` frame -> ``(..., 2F)``."""
        h, w = image_size
        scale = jnp.array([w, h], dtype=jnp.float32)
        return self.encode(coords.astype(jnp.float32) / scale)


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Attributes:
      embed_dim: token width (256).
      image_embedding_size: ``(64, 64)`` grid of the image embedding.
      input_image_size: ``(1024, 1024)`` frame the coordinates live in.
      mask_in_chans: hidden channels of the mask downscaler (16).
      text_embed_dim: width of the CLIP embeddings taken as a prompt token (0 = none).
    """

    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (64, 64)
    input_image_size: tuple[int, int] = (1024, 1024)
    mask_in_chans: int = 16
    text_embed_dim: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        def embed(n, name):
            return nn.Embed(
                n,
                self.embed_dim,
                param_dtype=self.param_dtype,
                embedding_init=partitioned(nn.initializers.normal(1.0), (None, "embed")),
                name=name,
            )

        self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = [embed(1, f"point_embeddings_{i}") for i in range(4)]
        self.not_a_point_embed = embed(1, "not_a_point_embed")
        self.no_mask_embed = embed(1, "no_mask_embed")
        c = self.mask_in_chans
        # Checkpoint keys mask_downscaling.{0,1,3,4,6}; 2 and 5 are the GELUs.
        self.mask_downscaling_0 = conv(
            c // 4, 2, self.dtype, self.param_dtype, "mask_downscaling_0", stride=2
        )
        self.mask_downscaling_1 = layer_norm(1e-6, self.dtype, self.param_dtype, "mask_downscaling_1")
        self.mask_downscaling_3 = conv(c, 2, self.dtype, self.param_dtype, "mask_downscaling_3", stride=2)
        self.mask_downscaling_4 = layer_norm(1e-6, self.dtype, self.param_dtype, "mask_downscaling_4")
        self.mask_downscaling_6 = conv(
            self.embed_dim, 1, self.dtype, self.param_dtype, "mask_downscaling_6", axes=(None, "embed")
        )
        if self.text_embed_dim:
            self.text_proj = dense(self.embed_dim, (None, "embed"), self.dtype, self.param_dtype, "text_proj")

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image embedding grid: ``(64, 64, 256)``."""
        return self.pe_layer.dense(self.image_embedding_size).astype(self.dtype)

    def _table(self, module: nn.Embed) -> jax.Array:
        return module.embedding[0].astype(jnp.float32)

    def _embed_points(self, coords: jax.Array, labels: jax.Array) -> jax.Array:
        """``(B, N, 2)`` pixel coords (1024 frame), ``(B, N)`` labels -> ``(B, N, E)``."""
        pe = self.pe_layer.with_coords(coords + 0.5, self.input_image_size)
        lab = labels[..., None]
        pe = jnp.where(lab < 0, 0.0, pe)
        pe = pe + jnp.where(lab == PAD_LABEL, self._table(self.not_a_point_embed), 0.0)
        pe = pe + jnp.where(lab == NEGATIVE_LABEL, self._table(self.point_embeddings[0]), 0.0)
        pe = pe + jnp.where(lab == POSITIVE_LABEL, self._table(self.point_embeddings[1]), 0.0)
        return pe

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """``(B, 4)`` XYXY pixel boxes -> ``(B, 2, E)`` corner tokens."""
        corners = (boxes.astype(jnp.float32) + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.with_coords(corners, self.input_image_size)
        kind = jnp.stack([self._table(self.point_embeddings[2]), self._table(self.point_embeddings[3])])
        return pe + kind

    def embed_text(self, text_embeddings: jax.Array) -> jax.Array:
        """``(B, D)`` CLIP embeddings -> ``(B, 1, E)`` prompt tokens (l2-normalised first)."""
        if not self.text_embed_dim:
            raise ValueError("this SAM has no text prompt (build it with text_embed_dim > 0)")
        if text_embeddings.shape[-1] != self.text_embed_dim:
            raise ValueError(
                f"text embeddings must have width {self.text_embed_dim}, got shape {text_embeddings.shape}"
            )
        x = text_embeddings.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return self.text_proj(x.astype(self.dtype))[:, None, :]

    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """``(B, 256, 256)`` mask logits -> ``(B, 64, 64, E)``."""
        x = masks[..., None].astype(self.dtype)
        x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)))
        x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)

    def __call__(
        self,
        point_coords: jax.Array | None,
        point_labels: jax.Array | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
        box_valid: jax.Array | None = None,
        mask_valid: jax.Array | None = None,
        text_embeddings: jax.Array | None = None,
        text_valid: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Embed a batch of prompts.

        Args:
          point_coords: ``(B, N, 2)`` XY in the input frame, or None.
          point_labels: ``(B, N)`` int labels (see module doc), or None.
          boxes: ``(B, 4)`` XYXY in the input frame, or None.
          masks: ``(B, 256, 256)`` low-res mask logits, or None.
          box_valid: optional ``(B,)`` bool: which rows really have a box. Rows
            without one get the padding point, as the reference gives a call
            without a box.
          mask_valid: optional ``(B,)`` bool: which rows really have a mask
            prompt; the others get ``no_mask_embed``.
          text_embeddings: optional ``(B, D)`` CLIP embeddings, one token per row after
            the point and box tokens (needs ``text_embed_dim``).
          text_valid: optional ``(B,)`` bool: which rows really have a text prompt.
        Returns:
          sparse ``(B, T, E)``, token validity ``(B, T)`` bool, dense ``(B, 64, 64, E)``.
        """
        bs = next((x.shape[0] for x in (point_coords, boxes, masks, text_embeddings) if x is not None), 1)
        tokens, valid = [], []
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with point_coords")
            coords, labels = point_coords, point_labels
            if boxes is None or box_valid is not None:
                # The reference appends one "not a point" token when there is no box.
                pad_valid = jnp.ones((bs,), bool) if boxes is None else ~box_valid
                coords = jnp.concatenate([coords, jnp.zeros((bs, 1, 2), coords.dtype)], 1)
                labels = jnp.concatenate(
                    [labels, jnp.where(pad_valid, PAD_LABEL, INVALID_LABEL)[:, None].astype(labels.dtype)], 1
                )
            tokens.append(self._embed_points(coords, labels))
            valid.append(labels != INVALID_LABEL)
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
            bv = jnp.ones((bs,), bool) if box_valid is None else box_valid
            valid.append(jnp.broadcast_to(bv[:, None], (bs, 2)))
        if text_embeddings is not None:
            tokens.append(self.embed_text(text_embeddings))
            tv = jnp.ones((bs,), bool) if text_valid is None else text_valid
            valid.append(tv[:, None])
        if tokens:
            sparse = jnp.concatenate(tokens, axis=1).astype(self.dtype)
            sparse_valid = jnp.concatenate(valid, axis=1)
        else:
            sparse = jnp.zeros((bs, 0, self.embed_dim), self.dtype)
            sparse_valid = jnp.zeros((bs, 0), bool)

        h, w = self.image_embedding_size
        no_mask = jnp.broadcast_to(
            self._table(self.no_mask_embed).astype(self.dtype), (bs, h, w, self.embed_dim)
        )
        if masks is None:
            dense = no_mask
        else:
            dense = self.embed_masks(masks)
            if mask_valid is not None:
                dense = jnp.where(mask_valid[:, None, None, None], dense, no_mask)
        return sparse, sparse_valid, dense
