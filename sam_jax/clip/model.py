"""CLIP (Radford et al. 2021): the ViT image encoder and the text transformer.

SAM's text-to-mask experiment (Kirillov et al. 2023, section 7.5 and appendix
D.5) prompts SAM with CLIP embeddings: the image embedding of a crop around a
mask in training, the text embedding of a phrase at inference. This is the CLIP
of the OpenAI release (section 2.4 of the CLIP paper: pre-norm ViT with a class
token and ``ln_pre``; a causal text transformer read at the end-of-text token;
QuickGELU MLPs), with one addition for SAM (paper D.5): *masked attention in the
last image layer*, so that the output (class) token attends only to the patches
inside a given mask.

Parameter paths map one to one onto the OpenAI state-dict keys with the rules of
:mod:`sam_jax.checkpoint` (``visual/transformer/resblocks_3/attn/in_proj_weight``
is ``visual.transformer.resblocks.3.attn.in_proj_weight``); raw matrices such as
``visual.proj``, ``text_projection`` and ``in_proj_weight`` keep the torch layout.

Inputs: images ``(B, S, S, 3)`` normalised with :data:`CLIP_MEAN` / :data:`CLIP_STD`
(see :func:`normalize`), tokens ``(B, 77)`` int32 from :mod:`sam_jax.clip.tokenizer`.
Outputs are the projected, *not* normalised embeddings ``(B, embed_dim)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.clip.checkpoint import clip_parameters, clip_params, read_clip_state_dict
from sam_jax.modeling.common import Dtype, conv, dense, layer_norm, partitioned

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Architecture of a CLIP ViT model (OpenAI naming)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    def replace(self, **kw) -> ClipConfig:
        return dataclasses.replace(self, **kw)


# The two released models SAM's recipe names (ViT-L/14@336px is the paper's).
CLIP_CONFIGS: dict[str, ClipConfig] = {
    "ViT-B/16": ClipConfig(),
    "ViT-L/14@336px": ClipConfig(
        embed_dim=768,
        image_size=336,
        patch_size=14,
        vision_width=1024,
        vision_layers=24,
        vision_heads=16,
        text_width=768,
        text_layers=12,
        text_heads=12,
    ),
}


def config_from_state_dict(shapes: Mapping[str, Any]) -> ClipConfig:
    """The :class:`ClipConfig` of an OpenAI CLIP ViT state dict (values: arrays or shapes).

    Head counts follow the OpenAI builder: width // 64.
    """

    def shape(key):
        if key not in shapes:
            raise ValueError(f"not a CLIP ViT state dict: no {key!r}")
        v = shapes[key]
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    def depth(prefix):
        idx = {int(k[len(prefix) :].split(".")[0]) for k in shapes if k.startswith(prefix)}
        return max(idx) + 1 if idx else 0

    width, _, patch, _ = shape("visual.conv1.weight")
    tokens = shape("visual.positional_embedding")[0]
    grid = round((tokens - 1) ** 0.5)
    if grid * grid + 1 != tokens:
        raise ValueError(f"visual.positional_embedding has {tokens} rows, not 1 + a square")
    text_width = shape("ln_final.weight")[0]
    return ClipConfig(
        embed_dim=shape("text_projection")[1],
        image_size=grid * patch,
        patch_size=patch,
        vision_width=width,
        vision_layers=depth("visual.transformer.resblocks."),
        vision_heads=width // 64,
        context_length=shape("positional_embedding")[0],
        vocab_size=shape("token_embedding.weight")[0],
        text_width=text_width,
        text_layers=depth("transformer.resblocks."),
        text_heads=text_width // 64,
    )


def quick_gelu(x: jax.Array) -> jax.Array:
    """The OpenAI models' GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` (packed q/k/v projection), batch first.

    ``(B, T, C)`` and an additive ``bias`` broadcastable to ``(B, heads, T, T)`` ->
    ``(B, T, C)``. Softmax in float32.
    """

    width: int
    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        c, h = self.width, self.heads
        if c % h:
            raise ValueError(f"width {c} is not divisible by {h} heads")
        w = self.param(
            "in_proj_weight",
            partitioned(nn.initializers.xavier_uniform(), ("heads", "embed")),
            (3 * c, c),
            self.param_dtype,
        )
        b = self.param(
            "in_proj_bias", partitioned(nn.initializers.zeros_init(), ("heads",)), (3 * c,), self.param_dtype
        )
        qkv = jnp.einsum("btc,oc->bto", x.astype(self.dtype), w.astype(self.dtype)) + b.astype(self.dtype)
        q, k, v = jnp.split(qkv.reshape(x.shape[0], x.shape[1], 3, h, c // h), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (c // h) ** -0.5
        if bias is not None:
            scores = scores + bias
        attn = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(x.shape)
        return dense(c, ("heads", "embed"), self.dtype, self.param_dtype, "out_proj")(out)


class Mlp(nn.Module):
    """``c_fc`` -> QuickGELU -> ``c_proj`` (4x hidden width). ``(..., C) -> (..., C)``."""

    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = dense(4 * self.width, ("embed", "mlp"), self.dtype, self.param_dtype, "c_fc")(x)
        return dense(self.width, ("mlp", "embed"), self.dtype, self.param_dtype, "c_proj")(quick_gelu(x))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1 x)``, then ``x + mlp(ln_2 x)``."""

    width: int
    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = x + MultiheadAttention(self.width, self.heads, name="attn", **kw)(
            layer_norm(LN_EPS, self.dtype, self.param_dtype, "ln_1")(x), bias
        )
        return x + Mlp(self.width, name="mlp", **kw)(
            layer_norm(LN_EPS, self.dtype, self.param_dtype, "ln_2")(x)
        )


class Transformer(nn.Module):
    """A stack of ``layers`` blocks. ``bias`` applies to every layer, ``last_bias``
    (if given) replaces it in the last one."""

    width: int
    layers: int
    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.resblocks = [
            ResidualAttentionBlock(self.width, self.heads, self.dtype, self.param_dtype)
            for _ in range(self.layers)
        ]

    def __call__(
        self, x: jax.Array, bias: jax.Array | None = None, last_bias: jax.Array | None = None
    ) -> jax.Array:
        for i, block in enumerate(self.resblocks):
            last = i == self.layers - 1
            x = block(x, last_bias if last and last_bias is not None else bias)
        return x


def patch_mask(mask: jax.Array, patch_size: int) -> jax.Array:
    """``(B, S, S)`` pixel mask -> ``(B, (S/p)^2)`` bool: patches at least half inside."""
    b, s, _ = mask.shape
    g = s // patch_size
    cover = mask.astype(jnp.float32).reshape(b, g, patch_size, g, patch_size).mean((2, 4))
    return (cover >= 0.5).reshape(b, g * g)


class VisionTransformer(nn.Module):
    """CLIP's image tower. ``(B, S, S, 3)`` normalised pixels -> ``(B, embed_dim)``."""

    config: ClipConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``mask``: optional ``(B, S, S)`` bool; the class token of the last layer then
        attends only to itself and to the patches at least half inside the mask."""
        c = self.config
        w, pd = c.vision_width, self.param_dtype
        if pixels.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(
                f"CLIP expects (B, {c.image_size}, {c.image_size}, 3) pixels, got {pixels.shape}"
            )
        x = conv(
            w,
            c.patch_size,
            self.dtype,
            pd,
            "conv1",
            stride=c.patch_size,
            use_bias=False,
            axes=(None, "embed"),
        )(pixels.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, w)
        scale = w**-0.5
        cls = self.param("class_embedding", partitioned(nn.initializers.normal(scale), ("embed",)), (w,), pd)
        pos = self.param(
            "positional_embedding",
            partitioned(nn.initializers.normal(scale), (None, "embed")),
            (c.grid_size**2 + 1, w),
            pd,
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, w)), x], axis=1)
        x = x + pos.astype(self.dtype)
        x = layer_norm(LN_EPS, self.dtype, pd, "ln_pre")(x)
        last_bias = None
        if mask is not None:
            keep = jnp.concatenate([jnp.ones((b, 1), bool), patch_mask(mask, c.patch_size)], 1)
            # Only the class token's row matters downstream; other rows attend as usual.
            row = jnp.arange(x.shape[1])[:, None] == 0
            allowed = jnp.where(row[None], keep[:, None, :], True)  # (B, T, T)
            last_bias = jnp.where(allowed, 0.0, -jnp.inf)[:, None]
        x = Transformer(w, c.vision_layers, c.vision_heads, self.dtype, pd, name="transformer")(
            x, None, last_bias
        )
        x = layer_norm(LN_EPS, self.dtype, pd, "ln_post")(x[:, 0])
        proj = self.param(
            "proj", partitioned(nn.initializers.normal(scale), ("embed", None)), (w, c.embed_dim), pd
        )
        return x @ proj.astype(self.dtype)


class CLIP(nn.Module):
    """Both towers; param paths as the OpenAI state dict (text tower at top level)."""

    config: ClipConfig = ClipConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c, pd = self.config, self.param_dtype
        self.visual = VisionTransformer(c, self.dtype, pd)
        self.token_embedding = nn.Embed(
            c.vocab_size,
            c.text_width,
            dtype=self.dtype,
            param_dtype=pd,
            embedding_init=partitioned(nn.initializers.normal(0.02), (None, "embed")),
        )
        self.positional_embedding = self.param(
            "positional_embedding",
            partitioned(nn.initializers.normal(0.01), (None, "embed")),
            (c.context_length, c.text_width),
            pd,
        )
        self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads, self.dtype, pd)
        self.ln_final = layer_norm(LN_EPS, self.dtype, pd, "ln_final")
        self.text_projection = self.param(
            "text_projection",
            partitioned(nn.initializers.normal(c.text_width**-0.5), ("embed", None)),
            (c.text_width, c.embed_dim),
            pd,
        )
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), (), pd)

    def encode_image(self, pixels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``(B, S, S, 3)`` normalised pixels (and optional ``(B, S, S)`` mask for the
        last-layer masked attention) -> ``(B, embed_dim)``."""
        return self.visual(pixels, mask)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """``(B, context_length)`` token ids -> ``(B, embed_dim)``, read at the
        end-of-text token (the largest id in each row)."""
        n = self.config.context_length
        if tokens.ndim != 2 or tokens.shape[1] != n:
            raise ValueError(f"CLIP expects (B, {n}) token ids, got {tokens.shape}")
        x = self.token_embedding(tokens) + self.positional_embedding.astype(self.dtype)
        causal = jnp.where(jnp.tril(jnp.ones((n, n), bool)), 0.0, -jnp.inf)
        x = self.ln_final(self.transformer(x, causal))
        eot = jnp.argmax(tokens, axis=-1)
        x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return x @ self.text_projection.astype(self.dtype)

    def __call__(self, pixels: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Both embeddings ``(B, D)``, ``(B', D)``; used for init."""
        return self.encode_image(pixels), self.encode_text(tokens)


def normalize(images: jax.Array) -> jax.Array:
    """RGB in [0, 255] -> CLIP-normalised float32 ``(..., 3)``."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / ||x||`` over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def init_clip(module: CLIP, rng: jax.Array) -> dict:
    """Random (boxed) variables of ``module``."""
    c = module.config
    return module.init(
        rng,
        jnp.zeros((1, c.image_size, c.image_size, 3), jnp.float32),
        jnp.zeros((1, c.context_length), jnp.int32),
    )


@dataclasses.dataclass
class ClipModel:
    """A :class:`CLIP` module with its parameters and jitted encoders.

    ``encode_text(tokens)``, ``encode_image(pixels, mask=None)`` return float32
    ``(B, D)``; ``embed_text(["a dog", ...])`` tokenises and returns the
    l2-normalised embeddings SAM is prompted with.
    """

    module: CLIP
    params: Any

    @property
    def config(self) -> ClipConfig:
        return self.module.config

    def encode_image(self, pixels: Any, mask: Any | None = None) -> jax.Array:
        return _encode_image(
            self.module,
            self.params,
            jnp.asarray(pixels, jnp.float32),
            None if mask is None else jnp.asarray(mask, bool),
        )

    def encode_text(self, tokens: Any) -> jax.Array:
        return _encode_text(self.module, self.params, jnp.asarray(tokens, jnp.int32))

    def embed_text(self, texts: str | list[str]) -> jax.Array:
        """Phrases -> ``(B, D)`` l2-normalised text embeddings."""
        from sam_jax.clip.tokenizer import tokenize

        return l2_normalize(self.encode_text(tokenize(texts, self.config.context_length)))


def _encode_image_fn(module, params, pixels, mask):
    return module.apply({"params": params}, pixels, mask, method=CLIP.encode_image).astype(jnp.float32)


def _encode_text_fn(module, params, tokens):
    return module.apply({"params": params}, tokens, method=CLIP.encode_text).astype(jnp.float32)


_encode_image = jax.jit(_encode_image_fn, static_argnums=0)
_encode_text = jax.jit(_encode_text_fn, static_argnums=0)


def build_clip(
    config: str | ClipConfig = "ViT-L/14@336px",
    checkpoint: Any = None,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    seed: int = 0,
    **overrides: Any,
) -> ClipModel:
    """A :class:`ClipModel`: random weights (``seed``), or an OpenAI checkpoint
    (TorchScript ``.pt`` archive or a plain state dict; config inferred from it).
    ``overrides``: :class:`ClipConfig` fields to change."""
    if checkpoint is not None:
        return load_clip(checkpoint, dtype=dtype, param_dtype=param_dtype, **overrides)
    if isinstance(config, str):
        if config not in CLIP_CONFIGS:
            raise ValueError(f"unknown CLIP model {config!r}; known: {sorted(CLIP_CONFIGS)}")
        config = CLIP_CONFIGS[config]
    config = config.replace(**overrides)
    module = CLIP(config, dtype=dtype, param_dtype=param_dtype)
    variables = jax.jit(init_clip, static_argnums=0)(module, jax.random.key(seed))
    return ClipModel(module, nn.unbox(variables["params"]))


def load_clip(
    path: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, **overrides: Any
) -> ClipModel:
    """A :class:`ClipModel` with the weights (and the architecture) of ``path``.

    ``overrides``: :class:`ClipConfig` fields the weights do not determine (the head
    counts are width // 64 in the OpenAI models).

    Raises ``CheckpointMismatchError`` naming missing/unexpected/wrongly shaped keys.
    """
    state_dict = clip_parameters(read_clip_state_dict(path))
    config = config_from_state_dict(state_dict).replace(**overrides)
    module = CLIP(config, dtype=dtype, param_dtype=param_dtype)
    template = jax.eval_shape(lambda r: init_clip(module, r), jax.random.key(0))["params"]
    return ClipModel(module, clip_params(state_dict, template))
