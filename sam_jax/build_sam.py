"""Model variants and the ``sam_model_registry``.

``sam_model_registry[name](checkpoint=None)`` mirrors the official builder: it
returns a :class:`SamModel` (the Flax module and its parameters) with random
weights, or with the weights of a released ``.pth`` checkpoint or of our own
converted ``.npz`` file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.sam import Sam, SamConfig

# One table defines every variant (REFERENCE.md section 1).
VARIANTS: dict[str, SamConfig] = {
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
}


def get_config(variant: str | SamConfig) -> SamConfig:
    """A :class:`SamConfig` from a variant name (``"default"`` is ``"vit_h"``) or itself."""
    if isinstance(variant, SamConfig):
        return variant
    name = "vit_h" if variant == "default" else variant
    if name not in VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; known: {sorted(VARIANTS)} and 'default'")
    return VARIANTS[name]


def _dummy_inputs(config: SamConfig):
    s, r = config.image_size, config.low_res_size
    return (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, 1, 2), jnp.float32),
            jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 4), jnp.float32),
            jnp.zeros((1, r, r), jnp.float32))


def init_variables(module: Sam, rng: jax.Array) -> dict[str, Any]:
    """Random variables of ``module``, boxed with their logical axis names.

    Under ``jax.jit`` only the initialisers run (the forward pass is dead code);
    use ``jax.eval_shape(functools.partial(init_variables, module), rng)`` for
    shapes and ``nn.get_partition_spec`` for shardings without allocating anything.
    """
    return module.init(rng, *_dummy_inputs(module.config))


@dataclasses.dataclass
class SamModel:
    """A SAM module together with its parameters.

    Attributes:
      module: the :class:`~sam_jax.modeling.sam.Sam` Linen module.
      params: its parameter tree (plain arrays; names follow the official keys).
      variant: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"custom"``.
    """

    module: Sam
    params: Any
    variant: str = "custom"

    @property
    def config(self) -> SamConfig:
        return self.module.config

    @property
    def image_size(self) -> int:
        return self.module.config.image_size

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params}

    def with_dtype(self, dtype: Any) -> "SamModel":
        """The same weights computing in ``dtype`` (e.g. ``jnp.bfloat16``)."""
        return dataclasses.replace(self, module=self.module.clone(dtype=dtype))

    @functools.cached_property
    def embed_images(self) -> Callable[[jax.Array], jax.Array]:
        """Jitted ``(B, S, S, 3)`` preprocessed pixels -> ``(B, S/16, S/16, 256)``."""
        fn = jax.jit(lambda p, x: self.module.apply({"params": p}, x, method=Sam.embed_images))
        return lambda pixels: fn(self.params, pixels)

    def decode(self, image_embeddings, point_coords=None, point_labels=None, boxes=None,
               mask_inputs=None, multimask_output=True, box_valid=None, mask_valid=None):
        """Jitted :meth:`Sam.decode` on this model's parameters."""
        return _decode_jit(self.module, multimask_output)(
            self.params, image_embeddings, point_coords, point_labels, boxes, mask_inputs,
            box_valid, mask_valid)


@functools.lru_cache(maxsize=32)
def _decode_jit(module: Sam, multimask_output: bool):
    def fn(params, emb, coords, labels, boxes, masks, box_valid, mask_valid):
        return module.apply({"params": params}, emb, coords, labels, boxes, masks,
                            multimask_output, box_valid, mask_valid, method=Sam.decode)
    return jax.jit(fn)


def build_sam(
    variant: str | SamConfig = "vit_h",
    checkpoint: str | os.PathLike | None = None,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    seed: int = 0,
    **module_kwargs: Any,
) -> SamModel:
    """Build a SAM model.

    Args:
      variant: a name from :data:`VARIANTS` (or ``"default"``), or a custom ``SamConfig``.
      checkpoint: an official ``.pth`` state_dict or our converted ``.npz``; None
        for random weights (seeded by ``seed``).
      dtype: compute dtype; param_dtype: storage dtype of the parameters.
      module_kwargs: further :class:`Sam` attributes (``attention_impl``, ...).
    """
    config = get_config(variant)
    name = variant if isinstance(variant, str) else "custom"
    name = "vit_h" if name == "default" else name
    module = Sam(config, dtype=dtype, param_dtype=param_dtype, **module_kwargs)
    if checkpoint is None:
        variables = jax.jit(init_variables, static_argnums=0)(module, jax.random.key(seed))
        params = nn.unbox(variables["params"])
    else:
        from sam_jax.checkpoint import load_checkpoint

        params = load_checkpoint(checkpoint, module)
    return SamModel(module=module, params=params, variant=name)


def _builder(name: str) -> Callable[..., SamModel]:
    def build(checkpoint: str | os.PathLike | None = None, **kwargs: Any) -> SamModel:
        return build_sam(name, checkpoint, **kwargs)

    build.__name__ = f"build_sam_{name}"
    build.__doc__ = f"Build SAM {name} (random weights, or from ``checkpoint``)."
    return build


sam_model_registry: dict[str, Callable[..., SamModel]] = {
    "default": _builder("vit_h"),
    "vit_h": _builder("vit_h"),
    "vit_l": _builder("vit_l"),
    "vit_b": _builder("vit_b"),
}
