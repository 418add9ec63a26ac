"""Building blocks shared by the three SAM networks.

Every layer here takes an explicit compute ``dtype`` and storage ``param_dtype`` and
annotates its weights with *logical* axis names. Logical names are mapped onto
device-mesh axes by the single rules table ``LOGICAL_AXIS_RULES`` in ``configs/base.py``
(applied by ``train.sharding``); the model code never names mesh axes itself.

Logical axis vocabulary used by the model:

* weights: ``"embed"`` (the width of a network: ViT ``C`` or decoder 256),
  ``"mlp"`` (MLP hidden width), ``"heads"`` (attention projection width
  q/k/v, i.e. ``heads * head_dim``), ``None`` (never sharded: small tables,
  convolution taps).
* activations: ``"batch"``, ``"act_embed"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Axes = Sequence[str | None]

# Parameter initialisers (MAE/ViTDet style for training from scratch; released
# checkpoints overwrite them).
default_kernel_init = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros_init()
ones = nn.initializers.ones_init()


def partitioned(init: Callable, axes: Axes) -> Callable:
    """An initialiser whose parameter carries logical axis names ``axes``."""
    return nn.with_logical_partitioning(init, tuple(axes))


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
    use_bias: bool = True,
) -> nn.Dense:
    """A Linear layer: kernel ``(in, out)`` with logical axes ``axes``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(default_kernel_init, axes),
        bias_init=partitioned(zeros, (axes[1],)),
        name=name,
    )


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm over the last (channel) axis.

    On NHWC feature maps this is exactly SAM's ``LayerNorm2d`` (per pixel, over
    channels); on token sequences it is ``nn.LayerNorm``. Statistics are computed
    in float32 whatever the compute dtype.
    """
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(ones, ("embed",)),
        bias_init=partitioned(zeros, ("embed",)),
        name=name,
    )


def conv(
    features: int,
    kernel: int,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    axes: tuple[str | None, str | None] = (None, None),
) -> nn.Module:
    """A 2-D convolution on NHWC maps, kernel ``(k, k, in, out)``.

    Without padding and with the stride equal to the kernel (the patch embedding, the
    mask downscaling, 1x1 convolutions) it is :class:`PatchConv`, one matmul over the
    patches; otherwise ``nn.Conv``. Both hold the same ``kernel`` and ``bias``.
    """
    kernel_init = partitioned(default_kernel_init, (None, None) + tuple(axes))
    bias_init = partitioned(zeros, (axes[1],))
    if stride == kernel and padding == 0:
        return PatchConv(features, kernel, use_bias, kernel_init, bias_init, dtype, param_dtype, name=name)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        bias_init=bias_init,
        name=name,
    )


class PatchConv(nn.Module):
    """Convolution with stride = kernel ``k`` and no padding, as a matmul over the patches.

    The ``k x k`` patches do not overlap, so output pixel ``(i, j)`` is the patch
    ``x[k*i : k*i+k, k*j : k*j+k]`` contracted with the kernel: a reshape and one
    ``einsum``, where XLA:CPU's convolution is 2-5x slower (its weight gradient for the
    patch embedding most of all). Parameters and result are ``nn.Conv``'s (``VALID``:
    rows and columns past the last whole patch are ignored).

    Shapes: ``(..., H, W, Cin) -> (..., H // k, W // k, features)``.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = zeros
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        *lead, h, w, cin = x.shape
        kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), self.param_dtype)
        x = x[..., : h // k * k, : w // k * k, :].reshape(*lead, h // k, k, w // k, k, cin)
        y = jnp.einsum("...yaxci,acio->...yxo", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x * (1 + erf(x / sqrt 2)) / 2``: ``torch.nn.GELU()``'s formula.

    ``jax.nn.gelu(approximate=False)`` computes ``erfc`` instead, which XLA:CPU runs
    about 1.5x slower; the two differ by at most 5e-7 for unit-scale inputs.
    """
    return x * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0))).astype(x.dtype)) * 0.5


class ConvTranspose2x2(nn.Module):
    """Transposed convolution with kernel 2 and stride 2, in blocked layout.

    With stride equal to the kernel size the output blocks do not overlap: each
    input pixel ``(i, j)`` produces the 2x2 output pixels ``(2i+a, 2j+c)`` as
    ``x[..., i, j, :] @ kernel[a, c] + bias``. The layer returns these blocks
    without interleaving them into a ``(2H, 2W)`` map, so that stacked layers and
    per-pixel ops (LayerNorm, GELU) skip the transposes of their large outputs; the
    caller interleaves the final result.

    Shapes: ``(..., Cin) -> (..., 2, 2, features)`` (axes ``a``, ``c`` of the block).
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        kernel = self.param(
            "kernel",
            partitioned(default_kernel_init, (None, None, None, None)),
            (2, 2, cin, self.features),
            self.param_dtype,
        )
        bias = self.param("bias", partitioned(zeros, (None,)), (self.features,), self.param_dtype)
        y = jnp.einsum("...i,acio->...aco", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class MLPBlock(nn.Module):
    """Linear -> ``activation`` -> Linear (``lin1``, ``lin2``). ``(..., C) -> (..., C)``.

    GELU in the image encoder, ReLU in the two-way transformer.
    """

    mlp_dim: int
    activation: Callable[[jax.Array], jax.Array] = gelu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = dense(self.mlp_dim, ("embed", "mlp"), self.dtype, self.param_dtype, "lin1")(x)
        return dense(c, ("mlp", "embed"), self.dtype, self.param_dtype, "lin2")(self.activation(x))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (SAM decoder heads).

    Submodules ``layers_0 .. layers_{n-1}`` map onto the checkpoint's
    ``layers.{i}``. Shapes: ``(..., in) -> (..., output_dim)``.
    """

    hidden_dim: int
    output_dim: int
    num_layers: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            features = self.output_dim if last else self.hidden_dim
            axes = ("mlp", "embed") if last else ("embed", "mlp")
            x = dense(features, axes, self.dtype, self.param_dtype, f"layers_{i}")(x)
            if not last:
                x = jax.nn.relu(x)
        return x


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample.

    Active only when ``deterministic`` is False and ``rate > 0``; then it needs
    the ``"dropout"`` RNG stream. Shapes: ``(B, ...) -> (B, ...)``.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
