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

from sam_jax.modeling.common import Dtype, MLPBlock, default_kernel_init, layer_norm, partitioned, zeros


class Linear(nn.Module):
    """The weights of one projection, ``kernel (in, out)`` and ``bias (out,)`` (the
    parameters of an ``nn.Dense`` of the same name), for :class:`Attention` to apply
    in whichever order of products is cheapest."""

    in_features: int
    features: int
    axes: tuple[str | None, str | None]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        init = partitioned(default_kernel_init, self.axes)
        kernel = self.param("kernel", init, (self.in_features, self.features), self.param_dtype)
        bias = self.param("bias", partitioned(zeros, (self.axes[1],)), (self.features,), self.param_dtype)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


def _cheapest(costs: dict[str, int]) -> str:
    """The way with the fewest multiplies; ``"direct"`` when a shape is symbolic (an
    export with a polymorphic batch), where the counts cannot be compared."""
    if not all(isinstance(c, int) for c in costs.values()):
        return "direct"
    return min(costs, key=costs.get)


def _einsum(spec: str, *xs: jax.Array, **kwargs) -> jax.Array:
    """``jnp.einsum`` where a leading batch axis ``b`` of size 1 is broadcast (the
    operand is contracted without it, not copied per row)."""
    ins, out = spec.split("->")
    ins = ins.split(",")
    b = max(x.shape[0] for s, x in zip(ins, xs) if s.startswith("b"))
    new = [(s[1:], x[0]) if s.startswith("b") and x.shape[0] < b else (s, x) for s, x in zip(ins, xs)]
    return jnp.einsum(",".join(s for s, _ in new) + "->" + out, *(x for _, x in new), **kwargs)


def project(x: jax.Array, w: jax.Array, bias: jax.Array) -> jax.Array:
    """``(B, T, E)`` tokens -> ``(B, T, heads, d)`` through ``w (E, heads, d)``, ``bias (heads, d)``."""
    return _einsum("bte,ehd->bthd", x, w) + bias


def first_layer_image_projections(
    layer_params: dict, keys: jax.Array, key_pe: jax.Array, num_heads: int, dtype: Dtype = jnp.float32
) -> dict[str, jax.Array]:
    """The projections of the first block that see only the image: token->image
    attention's keys ``(keys + key_pe) Wk`` and values ``keys Wv``, image->token
    attention's queries ``(keys + key_pe) Wq``, each ``(B, HW, heads, d)``.

    They do not depend on the prompts, so an image's are computed once and passed to
    every decode of it (``image_cache`` of :class:`TwoWayTransformer`).
    ``layer_params``: the parameters of ``layers_0``; keys ``(B, HW, E)`` (the image
    embedding plus the dense no-mask embedding), key_pe ``(1, HW, E)``.
    """

    def proj(p, x):
        w, b = p["kernel"].astype(dtype), p["bias"].astype(dtype)
        d = w.shape[1] // num_heads
        return project(x.astype(dtype), w.reshape(w.shape[0], num_heads, d), b.reshape(num_heads, d))

    t2i, i2t = layer_params["cross_attn_token_to_image"], layer_params["cross_attn_image_to_token"]
    return {
        "t2i_k": proj(t2i["k_proj"], keys + key_pe),
        "t2i_v": proj(t2i["v_proj"], keys),
        "i2t_q": proj(i2t["q_proj"], keys + key_pe),
    }


class Attention(nn.Module):
    """Attention with separate q/k/v/out projections and a downscaled inner width.

    ``q (B, Tq, E), k (B, Tk, E), v (B, Tk, E) -> (B, Tq, E)``; the inner width is
    ``E / downsample_rate`` split into ``num_heads``. ``key_valid (B, Tk)``
    excludes keys from attention. An input with batch 1 is projected once and
    broadcast to the batch of the others.

    The decoder's attentions pair a handful of prompt tokens with 4096 image
    tokens. Projecting the image tokens (``4096 x E x E/2`` per prompt) then costs
    more than the attention itself, so the products are reassociated by the
    static shapes (same result up to float rounding):

    * scores ``(q Wq_h + bq_h)(k Wk_h + bk_h)^T`` with few keys: project the keys, then
      fold ``Wq_h`` into them, ``q (Wq_h (k Wk_h + bk_h)^T) + ...``, so the many query
      tokens enter raw (``Tk * heads`` columns instead of ``E / 2``);
    * values and output: with few queries, average the raw values first
      (``(P v) Wv_h + bv_h``; the weights ``P`` sum to one); with few keys, fold the
      output projection into them (``P (v Wv_h + bv_h) Wo_h``).

    Each association is chosen by its multiply count; with one image shared by many
    prompts, projecting the image tokens once stays the cheapest and is kept.
    ``cached``: projections already computed (``{"q"|"k"|"v": (1|B, T, heads, d)}``,
    see :func:`first_layer_image_projections`); the products then start from them.
    """

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        key_valid: jax.Array | None = None,
        cached: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        e = self.embedding_dim
        inner = e // self.downsample_rate
        if inner % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide {inner}")
        h, d = self.num_heads, inner // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        wq, bq = Linear(q.shape[-1], inner, ("embed", "heads"), name="q_proj", **kw)()
        wk, bk = Linear(k.shape[-1], inner, ("embed", "heads"), name="k_proj", **kw)()
        wv, bv = Linear(v.shape[-1], inner, ("embed", "heads"), name="v_proj", **kw)()
        wo, bo = Linear(inner, e, ("heads", "embed"), name="out_proj", **kw)()
        wq, wk, wv = (w.reshape(w.shape[0], h, d) for w in (wq, wk, wv))
        bq, bk, bv = (x.reshape(h, d) for x in (bq, bk, bv))
        wo = wo.reshape(h, d, e)
        q, k, v = q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype)
        (bq_, tq, eq), (bk_, tk, ek), bv_ = q.shape, k.shape, v.shape[0]
        b = max(bq_, bk_, bv_)
        cached = cached or {}

        # ---- scores (b, tq, h, tk): queries x heads as rows, so the folded product is a plain GEMM.
        # (Folding Wk into a few queries also cuts multiplies but measured slower on
        # XLA:CPU: the raw image tokens then need a transposed copy per call.)
        way = _cheapest(
            {
                "direct": bq_ * tq * eq * inner + bk_ * tk * ek * inner + b * tq * tk * inner,
                "fold_k": bk_ * tk * ek * inner + b * tk * h * d * eq + b * tk * h * tq * eq,
            }
        )
        if "q" in cached or "k" in cached:  # a side is projected already: the direct way
            qh = cached["q"] if "q" in cached else project(q, wq, bq)
            kh = cached["k"] if "k" in cached else project(k, wk, bk)
            logits = _einsum("bihd,bjhd->bihj", qh, kh, preferred_element_type=jnp.float32)
        elif way == "fold_k":  # few keys: Wq folded into them, queries enter raw
            kh = project(k, wk, bk)
            g = _einsum("bjhd,ehd->bhje", kh, wq)
            logits = _einsum("bie,bhje->bihj", q, g, preferred_element_type=jnp.float32)
            logits += _einsum("hd,bjhd->bhj", bq, kh, preferred_element_type=jnp.float32)[:, None]
        else:
            logits = _einsum(
                "bihd,bjhd->bihj", project(q, wq, bq), project(k, wk, bk), preferred_element_type=jnp.float32
            )
        logits = logits * (d**-0.5)
        if key_valid is not None:
            logits = jnp.where(key_valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(logits, axis=-1).astype(self.dtype)

        # ---- values and output projection -> (b, tq, E)
        ev = v.shape[-1]
        way = _cheapest(
            {
                "direct": bv_ * tk * ev * inner + b * tq * tk * inner + b * tq * inner * e,
                "average_raw": b * h * tq * tk * ev + b * tq * ev * inner + b * tq * inner * e,
                "fold_out": bv_ * tk * ev * inner + b * tk * h * d * e + b * tq * h * tk * e,
            }
        )
        if "v" in cached:
            way = "direct"
        if way == "average_raw":  # few queries: average raw values, then project
            r = _einsum("bihj,bje->bihe", p, v)
            o = _einsum("bihe,ehd->bihd", r, wv) + bv
            out = _einsum("bihd,hde->bie", o, wo)
        elif way == "fold_out":  # few keys: fold the output projection into them
            u = _einsum("bjhd,hde->bhje", project(v, wv, bv), wo)
            out = _einsum("bihj,bhje->bie", p, u)
        else:
            o = _einsum("bihj,bjhd->bihd", p, cached["v"] if "v" in cached else project(v, wv, bv))
            out = _einsum("bihd,hde->bie", o, wo)
        return jnp.broadcast_to(out + bo, (b, tq, e))


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
    def __call__(self, queries, keys, query_pe, key_pe, token_valid=None, image_cache=None):
        """``queries (B, T, E), keys (1|B, HW, E), query_pe (B, T, E), key_pe (1|B, HW, E)``;
        ``image_cache``: :func:`first_layer_image_projections` of these keys (first block).

        Returns ``(B, T, E)`` queries and ``(B, HW, E)`` keys."""
        cache = image_cache or {}
        t2i_cache = {n: cache[f"t2i_{n}"] for n in ("k", "v") if f"t2i_{n}" in cache}
        i2t_cache = {"q": cache["i2t_q"]} if "i2t_q" in cache else None
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
        queries = queries + Attention(e, heads, rate, name="cross_attn_token_to_image", **kw)(
            q, k, keys, cached=t2i_cache
        )
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm2")(queries)

        queries = queries + MLPBlock(self.mlp_dim, jax.nn.relu, name="mlp", **kw)(queries)
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm3")(queries)

        q, k = queries + query_pe, keys + key_pe
        keys = keys + Attention(e, heads, rate, name="cross_attn_image_to_token", **kw)(
            k, q, queries, token_valid, cached=i2t_cache
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
      image_cache: optional :func:`first_layer_image_projections` of ``image_embedding``
        (with ``image_pe``) for the first block.
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
    def __call__(self, image_embedding, image_pe, point_embedding, token_valid=None, image_cache=None):
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
            )(queries, keys, point_embedding, key_pe, token_valid, image_cache if i == 0 else None)
        q, k = queries + point_embedding, keys + key_pe
        queries = queries + Attention(
            e, self.num_heads, self.attention_downsample_rate, name="final_attn_token_to_image", **kw
        )(q, k, keys)
        queries = layer_norm(1e-5, self.dtype, self.param_dtype, "norm_final_attn")(queries)
        return queries, keys
