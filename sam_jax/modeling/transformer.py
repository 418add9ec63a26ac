"""The two-way transformer of the mask decoder.

Prompt tokens (queries) and image tokens (keys) update each other: every block
runs token self-attention, token->image cross-attention, a token MLP and
image->token cross-attention, each followed by a LayerNorm (post-norm). A final
token->image attention ends the stack. Positional encodings are re-added to
queries and keys before every attention.

Padded prompt tokens (``token_valid == False``) are masked out wherever tokens
serve as keys, so padding never changes the valid outputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import Dtype, MLPBlock, dense, layer_norm


class Attention(nn.Module):
    """Attention with separate q/k/v/out projections and a downscaled inner width.

    ``q (B, Tq, E), k (B, Tk, E), v (B, Tk, E) -> (B, Tq, E)``; the inner width is
    ``E / downsample_rate`` split into ``num_heads``. ``key_valid (B, Tk)``
    excludes keys from attention. An input with batch 1 is projected once and
    broadcast to the batch of the others.
    """

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array | None = None
    ) -> jax.Array:
        inner = self.embedding_dim // self.downsample_rate
        if inner % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide {inner}")
        head_dim = inner // self.num_heads

        def project(x, name):
            y = dense(inner, ("embed", "heads"), self.dtype, self.param_dtype, name)(x)
            return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

        q, k, v = project(q, "q_proj"), project(k, "k_proj"), project(v, "v_proj")
        b = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (jnp.broadcast_to(x, (b,) + x.shape[1:]) for x in (q, k, v))
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim**-0.5)
        out = out.reshape(*out.shape[:-2], inner)
        return dense(self.embedding_dim, ("heads", "embed"), self.dtype, self.param_dtype, "out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
    """One block of the two-way transformer.

    ``skip_first_layer_pe``: in the first block the self-attention sees the raw
    tokens and replaces them (no residual), as in the reference.
    """

    embedding_dim: int
    num_heads: int
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe, token_valid=None):
        """``queries (B, T, E), keys (1|B, HW, E), query_pe (B, T, E), key_pe (1|B, HW, E)``.

        Returns ``(B, T, E)`` queries and ``(B, HW, E)`` keys."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        e, heads, rate = self.embedding_dim, self.num_heads, self.attention_downsample_rate

        self_attn = Attention(e, heads, name="self_attn", **kw)
        if self.skip_first_layer_pe:
            queries = self_attn(queries, queries, queries, token_valid)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries, token_valid)
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm1")(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = queries + Attention(e, heads, rate, name="cross_attn_token_to_image", **kw)(q, k, keys)
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm2")(queries)

        queries = queries + MLPBlock(self.mlp_dim, jax.nn.relu, name="mlp", **kw)(queries)
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm3")(queries)

        q, k = queries + query_pe, keys + key_pe
        keys = keys + Attention(e, heads, rate, name="cross_attn_image_to_token", **kw)(
            k, q, queries, token_valid
        )
        keys = layer_norm(1e-5, self.dtype, self.param_dtype, "norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` and a final token->image attention.

    Args to ``__call__``:
      image_embedding: ``(B, H, W, E)``, or ``(1, H, W, E)`` shared by all prompts.
      image_pe: ``(H, W, E)`` positional encoding of the image grid.
      point_embedding: ``(B, T, E)`` tokens.
      token_valid: optional ``(B, T)`` bool.
    Returns:
      ``(B, T, E)`` tokens and ``(B, H*W, E)`` image tokens.
    """

    depth: int = 2
    embedding_dim: int = 256
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image_embedding, image_pe, point_embedding, token_valid=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, e = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, e)
        key_pe = image_pe.reshape(1, h * w, e).astype(keys.dtype)
        queries = point_embedding
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                e,
                self.num_heads,
                self.mlp_dim,
                self.attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                name=f"layers_{i}",
                **kw,
            )(queries, keys, point_embedding, key_pe, token_valid)
        q, k = queries + point_embedding, keys + key_pe
        queries = queries + Attention(
            e, self.num_heads, self.attention_downsample_rate, name="final_attn_token_to_image", **kw
        )(q, k, keys)
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm_final_attn")(queries)
        return queries, keys
