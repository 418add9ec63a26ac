"""AdamW with layer-wise lr decay, warmup + step schedule, decay and freeze masks.

* Schedule: ``lr * min(1, (step + 1) / warmup_steps)``, times ``decay_factor`` for
  each of ``decay_steps`` already reached (``step`` = the update being made, from 0;
  the ``+ 1`` makes the very first update non-zero).
* Layer-wise lr decay: layer id 0 = ``image_encoder/patch_embed`` and
  ``image_encoder/pos_embed``; ``image_encoder/blocks_i`` = ``i + 1``; everything
  else (neck, prompt encoder, mask decoder) = ``depth + 1``. The update of a
  parameter is scaled by ``layer_decay ** (depth + 1 - layer)``.
* Weight decay (decoupled, scaled by the lr like AdamW) only on ``kernel`` leaves:
  not on norms, biases, ``pos_embed``, ``rel_pos_*`` tables or token/embedding
  tables.
* Frozen: ``prompt_encoder/pe_layer/positional_encoding_gaussian_matrix`` gets no
  update, no decay and no optimiser state.
* Optional global-norm gradient clipping (``grad_clip_norm > 0``).

Optimiser state is float32 like the params (the params are float32; bfloat16 is
only the compute dtype of the module).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

FROZEN = ("prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix")


def _names(path) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def layer_id(names: tuple[str, ...], depth: int) -> int:
    """Layer of a parameter for layer-wise lr decay (see module doc)."""
    if names[0] == "image_encoder":
        if names[1] in ("patch_embed", "pos_embed"):
            return 0
        m = re.fullmatch(r"blocks_(\d+)", names[1])
        if m:
            return int(m.group(1)) + 1
    return depth + 1


def decay_mask(params: Any) -> Any:
    """True where weight decay applies (``kernel`` leaves only)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _names(p)[-1] == "kernel", params)


def trainable_labels(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if _names(p)[-3:] == FROZEN else "train", params
    )


def make_schedule(optim) -> optax.Schedule:
    lr, warmup = float(optim.lr), int(optim.warmup_steps)
    bounds = jnp.asarray(
        sorted(optim.decay_steps) or [2**62], jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    )
    factor = float(optim.decay_factor)

    def schedule(step):
        step = jnp.asarray(step)
        warm = jnp.minimum(1.0, (step + 1) / max(warmup, 1)) if warmup > 0 else 1.0
        n = (step[..., None] >= bounds).sum(-1)
        return lr * warm * factor ** n.astype(jnp.float32)

    return schedule


def _scale_by_layer(depth: int, layer_decay: float) -> optax.GradientTransformation:
    """Multiply each update by its layer's lr scale (computed from the tree paths, so it
    also works on the partial trees ``optax.multi_transform`` hands to its branches)."""

    def update(updates, state, params=None):
        return jax.tree_util.tree_map_with_path(
            lambda p, u: u * layer_decay ** (depth + 1 - layer_id(_names(p), depth)), updates
        ), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def build_optimizer(optim, params: Any, depth: int):
    """``(tx, schedule)`` for a (possibly abstract) param tree of a depth-``depth`` encoder.

    ``optim``: the config's ``optim`` section (lr, b1, b2, eps, weight_decay,
    layer_decay, warmup_steps, decay_steps, decay_factor, grad_clip_norm).
    """
    schedule = make_schedule(optim)
    labels = trainable_labels(params)
    chain = []
    if optim.grad_clip_norm and optim.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(float(optim.grad_clip_norm)))
    chain += [
        optax.scale_by_adam(b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps)),
        optax.add_decayed_weights(float(optim.weight_decay), mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
        _scale_by_layer(depth, float(optim.layer_decay)),
    ]
    tx = optax.multi_transform({"train": optax.chain(*chain), "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
