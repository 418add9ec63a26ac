"""The image encoder: an MAE-style ViT with windowed and global attention.

A 1024x1024 image becomes a 64x64 grid of 16x16 patches; ``depth`` pre-norm
transformer blocks follow, most attending inside 14x14 windows and a few
(``global_attn_indexes``) over the whole grid; a neck maps the result to a
``(B, 64, 64, 256)`` image embedding. All attention adds SAM's decomposed
relative position term to the scores: on GPU and TPU as a bias to
``jax.nn.dot_product_attention``, on CPU inside a loop over query chunks
(:func:`decomposed_attention`).

Feature maps are NHWC throughout. Submodule and parameter names follow the
official checkpoint keys (``blocks.3.attn.qkv.weight`` <-> ``blocks_3/attn/qkv/kernel``;
see ``sam_jax.checkpoint``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import (
    DropPath,
    Dtype,
    MLPBlock,
    conv,
    dense,
    gelu,
    layer_norm,
    partitioned,
    zeros,
)


def resize_rel_pos(table: jax.Array, length: int) -> jax.Array:
    """Linearly resize a relative position table along its length.

    ``(L, D) -> (length, D)``, half-pixel sampling without antialiasing (the
    behaviour of ``F.interpolate(mode="linear", align_corners=False)``).
    """
    if table.shape[0] == length:
        return table
    return jax.image.resize(table, (length, table.shape[1]), "linear", antialias=False)


def relative_positions(q_size: int, k_size: int, table: jax.Array) -> jax.Array:
    """Gather the relative position embedding for every (query, key) pair.

    Args:
      q_size, k_size: query and key lengths along one spatial axis.
      table: ``(L, D)`` learned embedding, resized to ``2*max(q,k)-1`` if needed.
    Returns:
      ``(q_size, k_size, D)`` with entry ``[i, j] = table[i*sq - j*sk + (k_size-1)*sk]``
      where ``sq = max(k/q, 1)`` and ``sk = max(q/k, 1)``.
    """
    table = resize_rel_pos(table, 2 * max(q_size, k_size) - 1)
    q_coords = jnp.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = jnp.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    index = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[index.astype(jnp.int32)]


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """Zero-pad to a multiple of ``window`` and cut into non-overlapping windows.

    ``(B, H, W, C) -> (B * nH * nW, window, window, C)`` and the padded ``(Hp, Wp)``.
    Padded tokens take part in attention unmasked, as in the reference.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
    return x, (hp, wp)


def window_unpartition(
    x: jax.Array, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of :func:`window_partition`: ``(B*nW, w, w, C) -> (B, H, W, C)``."""
    hp, wp = padded_hw
    nh, nw = hp // window, wp // window
    c = x.shape[-1]
    x = x.reshape(-1, nh, nw, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, hp, wp, c)
    return x[:, : hw[0], : hw[1], :]


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array | None,
    rel_w: jax.Array | None,
    scale: float,
    implementation: str | None,
) -> jax.Array:
    """Softmax attention over a 2-D token grid with decomposed relative positions.

    Args:
      q, k, v: ``(B, T, N, D)`` with ``T = H * W`` tokens in row-major grid order.
      rel_h, rel_w: ``(B, N, H, W, H)`` and ``(B, N, H, W, W)`` relative position
        terms (or None): score ``[(y, x), (ky, kx)] += rel_h[y, x, ky] + rel_w[y, x, kx]``.
      scale: multiplies ``q . k``.
      implementation: ``"auto"``/None (``"decomposed"`` on CPU, else
        ``jax.nn.dot_product_attention``'s own choice), ``"xla"`` or ``"cudnn"`` (passed
        to ``jax.nn.dot_product_attention`` with the relative term as a ``(B, N, T, T)``
        bias), or ``"decomposed"`` (:func:`decomposed_attention`).
    Returns:
      ``(B, T, N, D)``.
    """
    if implementation in (None, "auto"):
        implementation = "decomposed" if jax.default_backend() == "cpu" else None
    if implementation == "decomposed":
        return decomposed_attention(q, k, v, rel_h, rel_w, scale)
    b, t, n, _ = q.shape
    bias = None
    if rel_h is not None:
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, t, t)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=implementation)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(i for i in range(1, min(n, max(at_most, 1)) + 1) if n % i == 0)


def decomposed_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array | None,
    rel_w: jax.Array | None,
    scale: float,
    chunk_bytes: int = 4 << 20,
) -> jax.Array:
    """:func:`attention` in a loop over chunks of queries whose scores stay in cache.

    The CPU path. The ``(B, N, T, T)`` scores of a global block (800 MB for vit_b
    at 1024 in float32) are never materialised: a loop runs over chunks of images
    (or windows), heads and grid rows of queries whose float32 scores take at most
    about ``chunk_bytes``. Within a chunk the relative-position bias is added to the
    scores as they are reshaped to ``(..., Hk, Wk)`` (no ``(T, T)`` bias tensor), and
    the softmax normalisation is one division after the value product. On vit_b at
    1024 on a 2-core CPU this takes a global block's attention from 0.85 s (one
    chunk, page-faulting fresh 800 MB buffers) to 0.41 s. When one chunk holds
    everything (small inputs) there is no loop.
    """
    b, t, n, d = q.shape
    h, w = rel_h.shape[2:4] if rel_h is not None else (t, 1)
    row_bytes = w * t * 4  # float32 scores of one grid row of queries, one head
    items, heads, rows = 1, 1, h
    if n * h * row_bytes <= chunk_bytes:
        items, heads = _largest_divisor(b, chunk_bytes // (n * h * row_bytes)), n
    elif h * row_bytes <= chunk_bytes:
        heads = _largest_divisor(n, chunk_bytes // (h * row_bytes))
    else:
        rows = _largest_divisor(h, chunk_bytes // row_bytes)
    nb, nh, nr = b // items, n // heads, h // rows
    # Loop axes first: (nb * nh) outer, nr inner; then (G items, heads) batch axes.
    qs = (q * jnp.asarray(scale, q.dtype)).reshape(nb, items, nr, rows * w, nh, heads, d)
    qs = qs.transpose(0, 4, 2, 1, 5, 3, 6).reshape(nb * nh, nr, items, heads, rows * w, d)
    ks, vs = (
        x.reshape(nb, items, t, nh, heads, d).transpose(0, 3, 1, 4, 2, 5).reshape(nb * nh, items, heads, t, d)
        for x in (k, v)
    )
    rels = None
    if rel_h is not None:  # (B, N, H, W, K) -> (nb*nh, nr, G, heads, R, W, K)
        rels = tuple(
            x.reshape(nb, items, nh, heads, nr, rows, w, x.shape[-1])
            .transpose(0, 2, 4, 1, 3, 5, 6, 7)
            .reshape(nb * nh, nr, items, heads, rows, w, -1)
            for x in (rel_h, rel_w)
        )

    def chunk(qc, kc, vc, relc):  # (G, n, R*W, D), (G, n, T, D), (G, n, T, D)
        logits = jnp.einsum("gnqd,gnsd->gnqs", qc, kc)
        key_axes = (-1,)
        if relc is not None:  # scores as (G, n, R, W, Hk, Wk): the bias broadcasts in place
            rh, rw = relc
            logits = logits.reshape(*rh.shape[:-1], rh.shape[-1], rw.shape[-1])
            logits = logits + rh[..., :, None] + rw[..., None, :]
            key_axes = (-2, -1)
        logits = logits.astype(jnp.float32)
        top = jax.lax.stop_gradient(logits.max(axis=key_axes, keepdims=True))
        probs = jnp.exp(logits - top).astype(v.dtype).reshape(qc.shape[:-1] + (t,))
        denom = probs.astype(jnp.float32).sum(-1, keepdims=True)
        out = jnp.einsum("gnqs,gnsd->gnqd", probs, vc, preferred_element_type=jnp.float32)
        return out / denom  # (G, n, R*W, D)

    def outer(xs):
        qo, ko, vo, relo = xs
        return jax.lax.map(lambda ys: chunk(ys[0], ko, vo, ys[1]), (qo, relo))

    if nb * nh * nr == 1:  # one chunk, no loop (the demo encoder: 2-11 % faster)
        out = chunk(qs[0, 0], ks[0], vs[0], None if rels is None else tuple(x[0, 0] for x in rels))
        out = out[None, None]
    else:
        out = jax.lax.map(outer, (qs, ks, vs, rels))  # (nb*nh, nr, G, heads, R*W, D)
    out = out.reshape(nb, nh, nr, items, heads, rows * w, d).transpose(0, 3, 2, 5, 1, 4, 6)
    return out.reshape(b, t, n, d).astype(q.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative position bias.

    ``(B, H, W, C) -> (B, H, W, C)``; see :func:`attention`. Scores are
    ``(q * d^-0.5) k^T + rel_h + rel_w`` where ``rel_h[qh,qw,kh] = q . Rh[qh,kh]`` and
    ``rel_w[qh,qw,kw] = q . Rw[qw,kw]`` use the unscaled ``q``. ``rel_pos_size`` is
    the grid side the position tables were made for (14 in window blocks, 64 in
    global blocks at 1024 input).

    With ``window_size > 0`` attention runs inside non-overlapping windows of the
    grid zero-padded to a multiple of the window (padded tokens attend and are
    attended to, unmasked, as in the reference). The projections run on the real
    tokens only: a zero token's q, k, v is the qkv bias, and the padded outputs are
    cropped before the output projection, so the result is the reference's.
    """

    num_heads: int
    rel_pos_size: int
    window_size: int = 0
    use_rel_pos: bool = True
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        head_dim = c // self.num_heads
        qkv_layer = dense(3 * c, ("embed", "heads"), self.dtype, self.param_dtype, "qkv")
        qkv = qkv_layer(x)  # (B, H, W, 3C)
        if self.window_size > 0:
            ws = self.window_size
            hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
            if (hp, wp) != (h, w):
                zero_token = qkv_layer(jnp.zeros((1, c), x.dtype))[0]  # = the qkv bias
                real = (jnp.arange(hp)[:, None] < h) & (jnp.arange(wp)[None, :] < w)
                qkv = jnp.pad(qkv, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
                qkv = jnp.where(real[None, :, :, None], qkv, zero_token)
            qkv, padded_hw = window_partition(qkv, ws)
        gb, gh, gw = qkv.shape[:3]
        qkv = qkv.reshape(gb, gh * gw, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B', T, N, D)

        rel_h = rel_w = None
        if self.use_rel_pos:
            table_shape = (2 * self.rel_pos_size - 1, head_dim)
            rel_pos_h = self.param(
                "rel_pos_h", partitioned(zeros, (None, None)), table_shape, self.param_dtype
            )
            rel_pos_w = self.param(
                "rel_pos_w", partitioned(zeros, (None, None)), table_shape, self.param_dtype
            )
            rh = relative_positions(gh, gh, rel_pos_h).astype(self.dtype)  # (H', H', D)
            rw = relative_positions(gw, gw, rel_pos_w).astype(self.dtype)  # (W', W', D)
            q_grid = q.reshape(gb, gh, gw, self.num_heads, head_dim)
            rel_h = jnp.einsum("byxnd,ykd->bnyxk", q_grid, rh)  # (B', N, H', W', H')
            rel_w = jnp.einsum("byxnd,xkd->bnyxk", q_grid, rw)  # (B', N, H', W', W')
        out = attention(q, k, v, rel_h, rel_w, head_dim**-0.5, self.attention_impl)
        out = out.reshape(gb, gh, gw, c)
        if self.window_size > 0:
            out = window_unpartition(out, self.window_size, padded_hw, (h, w))
        return dense(c, ("heads", "embed"), self.dtype, self.param_dtype, "proj")(out)


class Block(nn.Module):
    """Pre-norm ViT block; windowed attention when ``window_size > 0``.

    ``(B, H, W, C) -> (B, H, W, C)``.
    """

    num_heads: int
    mlp_ratio: float
    window_size: int
    rel_pos_size: int
    drop_path: float = 0.0
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        c = x.shape[-1]
        shortcut = x
        x = layer_norm(1e-6, self.dtype, self.param_dtype, "norm1")(x)
        x = Attention(
            self.num_heads,
            self.rel_pos_size,
            self.window_size,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(x)
        drop = DropPath(self.drop_path, name="drop_path")
        x = shortcut + drop(x, deterministic)
        y = layer_norm(1e-6, self.dtype, self.param_dtype, "norm2")(x)
        y = MLPBlock(int(c * self.mlp_ratio), gelu, self.dtype, self.param_dtype, name="mlp")(y)
        x = x + drop(y, deterministic)
        return nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))


class ImageEncoderViT(nn.Module):
    """ViT image encoder with neck.

    ``(B, img_size, img_size, 3)`` normalised, padded pixels ->
    ``(B, img_size/patch, img_size/patch, out_chans)`` image embedding.

    ``remat_policy`` (training): ``"none"``, ``"full"`` (recompute each block) or
    the name of a ``jax.checkpoint_policies`` policy, e.g.
    ``"dots_with_no_batch_dims_saveable"``.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    drop_path_rate: float = 0.0
    remat_policy: str = "none"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if x.shape[1:] != (self.img_size, self.img_size, 3):
            raise ValueError(
                f"image encoder expects (B, {self.img_size}, {self.img_size}, 3) pixels, got {x.shape}"
            )
        grid = self.img_size // self.patch_size
        x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, self.param_dtype, name="patch_embed")(x)
        pos_embed = self.param(
            "pos_embed",
            partitioned(zeros, (None, None, None, "embed")),
            (1, grid, grid, self.embed_dim),
            self.param_dtype,
        )
        x = x + pos_embed.astype(self.dtype)
        x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))

        block_cls = Block
        if self.remat_policy != "none":
            policy = (
                None if self.remat_policy == "full" else getattr(jax.checkpoint_policies, self.remat_policy)
            )
            block_cls = nn.remat(Block, policy=policy, static_argnums=(2,))
        for i in range(self.depth):
            is_global = i in tuple(self.global_attn_indexes)
            drop = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = block_cls(
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio,
                window_size=0 if is_global else self.window_size,
                rel_pos_size=grid if is_global else self.window_size,
                drop_path=drop,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"blocks_{i}",
            )(x, deterministic)

        # Neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (checkpoint keys neck.0-3).
        x = conv(
            self.out_chans, 1, self.dtype, self.param_dtype, "neck_0", use_bias=False, axes=("embed", None)
        )(x)
        x = layer_norm(1e-6, self.dtype, self.param_dtype, "neck_1")(x)
        x = conv(self.out_chans, 3, self.dtype, self.param_dtype, "neck_2", padding=1, use_bias=False)(x)
        return layer_norm(1e-6, self.dtype, self.param_dtype, "neck_3")(x)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, S, S, 3) -> (B, S/p, S/p, C)``."""

    embed_dim: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(
            self.embed_dim,
            self.patch_size,
            self.dtype,
            self.param_dtype,
            "proj",
            stride=self.patch_size,
            axes=(None, "embed"),
        )(x.astype(self.dtype))
