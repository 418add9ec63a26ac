"""The SAM variants and parameter initialisation (paper section 3 and Appendix A).

The paper's image encoder is an MAE-pretrained ViT-H/16; ViT-B and ViT-L are the
smaller released variants (section 7.6). They differ only in the encoder's width,
depth, heads and the positions of its global-attention blocks; prompt encoder
and mask decoder are shared. One table, :data:`VARIANTS`, holds them, and
:func:`get_config` turns a variant name (or a config) plus field overrides into a
:class:`~sam_jax.modeling.sam.SamConfig` for every user: the builder, the
command line's custom configs and the training configs.

:func:`init_variables` gives a module's random variables, :func:`param_template`
their abstract shapes (nothing allocated): the template the checkpoint loader
(:mod:`sam_jax.checkpoint`) maps files onto.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.checkpoint import CheckpointMismatchError
from sam_jax.modeling.sam import Sam, SamConfig

# One table defines every released variant.
VARIANTS: dict[str, SamConfig] = {
    "vit_b": SamConfig(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
}
_FIELDS = tuple(f.name for f in dataclasses.fields(SamConfig))


def get_config(variant: str | SamConfig, **overrides: Any) -> SamConfig:
    """The :class:`SamConfig` of ``variant`` with ``overrides`` applied.

    Args:
      variant: ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"default"`` (= ``"vit_h"``),
        ``"custom"`` (the :class:`SamConfig` defaults, for configs that give every
        field) or a :class:`SamConfig` to start from.
      overrides: :class:`SamConfig` fields; lists become tuples (JSON, ml_collections).
    Raises:
      ValueError: an unknown variant name or field.
    """
    if isinstance(variant, SamConfig):
        config = variant
    elif variant == "custom":
        config = SamConfig()
    else:
        name = "vit_h" if variant == "default" else variant
        if name not in VARIANTS:
            raise ValueError(
                f"unknown SAM variant {variant!r}; known: {sorted(VARIANTS)}, 'default' and 'custom'"
            )
        config = VARIANTS[name]
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown SamConfig field(s) {unknown}; known: {list(_FIELDS)}")
    if not overrides:
        return config
    fixed = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **fixed)


def config_from_json(text: str) -> SamConfig:
    """A custom :class:`SamConfig` from a JSON object of its fields (the CLI's ``--config-json``).

    Raises:
      ValueError: malformed JSON, not an object, or an unknown field.
    """
    fields = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(fields, dict):
        raise ValueError(f"expected a JSON object, got {type(fields).__name__}")
    return get_config("custom", **fields)


def _dummy_inputs(config: SamConfig):
    s, r = config.image_size, config.low_res_size
    return (
        jnp.zeros((1, s, s, 3), jnp.float32),
        jnp.zeros((1, 1, 2), jnp.float32),
        jnp.ones((1, 1), jnp.int32),
        jnp.zeros((1, 4), jnp.float32),
        jnp.zeros((1, r, r), jnp.float32),
    )


def init_variables(module: Sam, rng: jax.Array) -> dict[str, Any]:
    """Random variables of ``module``, boxed with their logical axis names.

    Under ``jax.jit`` only the initialisers run (the forward pass is dead code);
    use :func:`param_template` (or ``jax.eval_shape``) for shapes and
    ``nn.get_partition_spec`` for shardings without allocating anything.
    """
    return module.init(rng, *_dummy_inputs(module.config))


def param_template(module: Sam) -> Any:
    """Abstract (shape/dtype only, boxed) params of ``module``; allocates nothing.

    Tracing ViT-H's initialisation takes about a second, so the tree is kept per
    module (modules are hashable; the caller gets its own copy of the containers).
    """
    return jax.tree.map(lambda x: x, _param_template(module))


@functools.lru_cache(maxsize=8)
def _param_template(module: Sam) -> Any:
    # The key is made inside the trace: a concrete one would dispatch (and compile) a
    # computation, 0.1 s of a checkpoint load.
    return jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))["params"]


def guess_variant(state_dict: Mapping[str, np.ndarray]) -> str:
    """Which of :data:`VARIANTS` an official state_dict holds (by encoder width and depth).

    Raises:
      CheckpointMismatchError: not a SAM state_dict, or no variant has its shape.
    """
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise CheckpointMismatchError(f"not a SAM checkpoint: no {key}")
    width = state_dict[key].shape[0]
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, cfg in VARIANTS.items():
        if (cfg.encoder_embed_dim, cfg.encoder_depth) == (width, depth):
            return name
    raise CheckpointMismatchError(f"no SAM variant has width {width} and depth {depth}")


__all__ = ["VARIANTS", "get_config", "init_variables", "param_template", "guess_variant"]
