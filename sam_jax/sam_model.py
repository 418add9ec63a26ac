"""The inference core: a SAM module with its parameters, and the model registry.

SAM embeds an image once and decodes masks for many prompts from the embedding
(paper section 3). :class:`SamModel` holds the Linen module and its parameters
and runs the two halves as the one pair of jitted functions every inference
path uses (``SamPredictor``, ``SamAutomaticMaskGenerator``, ``train.evaluate``,
the demo)::

    emb = model.embed_images(pixels)                 # (B, S, S, 3) -> (B, S/16, S/16, 256)
    low_res, iou = model.decode(emb, coords, labels)  # (B, K, S/4, S/4), (B, K)

Decoding the same image many times, ``model.image_cache(emb)`` computes the
decoder's prompt-independent first-block projections and the grid's positional
encoding once; passed as ``decode(..., image_cache=...)`` they are not recomputed
per call.

Both jits take the module as a static argument, so every :class:`SamModel` of
the same module shares their compilations (:func:`compile_counts`).

``sam_model_registry[name](checkpoint=None)`` mirrors the official builder: it
returns a :class:`SamModel` with random weights, or with the weights of a
released ``.pth`` checkpoint or of our converted ``.npz`` file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.checkpoint import load_checkpoint, read_pth, save_params, state_dict_to_params
from sam_jax.geometry import normalize
from sam_jax.modeling.sam import Sam, SamConfig
from sam_jax.modeling.variants import get_config, guess_variant, init_variables, param_template


@functools.partial(jax.jit, static_argnames=("module",))
def _embed(module: Sam, params: Any, pixels: jax.Array, sizes: jax.Array | None) -> jax.Array:
    """``(B, S, S, 3)`` pixels -> ``(B, S/16, S/16, 256)`` embeddings (see :meth:`SamModel.embed_images`)."""
    x = pixels
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = normalize(x)
    if sizes is not None:
        s = x.shape[1]
        inside = (jnp.arange(s)[None, :, None] < sizes[:, 0, None, None]) & (
            jnp.arange(s)[None, None, :] < sizes[:, 1, None, None]
        )
        x = jnp.where(inside[..., None], x, 0.0)
    return module.apply({"params": params}, x, method=Sam.embed_images)


@functools.partial(jax.jit, static_argnames=("module", "multimask_output"))
def _decode(
    module: Sam,
    params: Any,
    emb: jax.Array,
    coords: jax.Array | None,
    labels: jax.Array | None,
    boxes: jax.Array | None,
    masks: jax.Array | None,
    box_valid: jax.Array | None,
    mask_valid: jax.Array | None,
    multimask_output: bool,
    text: jax.Array | None = None,
    image_cache: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    def run(emb, coords, labels, boxes, masks, box_valid, mask_valid, text, image_cache):
        return module.apply(
            {"params": params},
            emb,
            coords,
            labels,
            boxes,
            masks,
            multimask_output,
            box_valid,
            mask_valid,
            text,
            image_cache=image_cache,
            method=Sam.decode,
        )

    args = (emb, coords, labels, boxes, masks, box_valid, mask_valid, text, image_cache)
    b = max(x.shape[0] for x in jax.tree.leaves(args))
    if not (isinstance(b, int) and b > 1 and jax.default_backend() == "cpu"):
        return run(*args)
    # On the CPU, one prompt row at a time: every row's image-sized intermediates
    # (4096 image tokens, the 4x upscaled features) then stay in the cache, which
    # halves the time of a 64-row decode; the rows share one compiled body.
    per_row = tuple(x is not None and all(y.shape[0] == b for y in jax.tree.leaves(x)) for x in args)
    rows = tuple(jax.tree.map(lambda y: y[:, None], x) if r else None for x, r in zip(args, per_row))

    def row(xs):
        return run(*(x if r else a for x, r, a in zip(xs, per_row, args)))

    low_res, iou = jax.lax.map(row, rows)
    return low_res[:, 0], iou[:, 0]


@functools.partial(jax.jit, static_argnames=("module",))
def _image_cache(module: Sam, params: Any, emb: jax.Array) -> dict[str, jax.Array]:
    return module.apply({"params": params}, emb, method=Sam.image_cache)


def compile_counts() -> dict[str, int]:
    """Number of compiled variants of the core's ``embed`` and ``decode`` jits."""
    return {"embed": _embed._cache_size(), "decode": _decode._cache_size()}


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

    @property
    def decoder_params(self) -> dict[str, Any]:
        """The parameters :meth:`decode` reads (prompt encoder and mask decoder): a jitted
        call flattens only these, not the image encoder's, on every dispatch."""
        return {k: self.params[k] for k in ("prompt_encoder", "mask_decoder")}

    def with_dtype(self, dtype: Any) -> SamModel:
        """The same weights computing in ``dtype`` (e.g. ``jnp.bfloat16``)."""
        return dataclasses.replace(self, module=self.module.clone(dtype=dtype))

    def embed_images(self, pixels: Any, sizes: Any = None) -> jax.Array:
        """Jitted image encoder: ``(B, S, S, 3)`` -> ``(B, S/16, S/16, 256)``.

        Args:
          pixels: preprocessed float pixels (normalised, zero-padded), or raw RGB
            uint8 pixels (the resized image top-left), normalised here.
          sizes: optional ``(B, 2)`` int ``(h, w)`` of each resized image; pixels
            outside it are zeroed after normalisation (the padding).
        """
        return _embed(self.module, self.params, pixels, sizes)

    def image_cache(self, image_embeddings: Any) -> dict[str, jax.Array]:
        """Jitted :meth:`Sam.image_cache`: the first decoder block's prompt-independent
        projections of ``(B, S/16, S/16, 256)`` embeddings and the dense positional
        encoding, for :meth:`decode`'s ``image_cache`` (each decode then skips them)."""
        return _image_cache(self.module, self.decoder_params, image_embeddings)

    def decode(
        self,
        image_embeddings,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_inputs=None,
        multimask_output=True,
        box_valid=None,
        mask_valid=None,
        text_embeddings=None,
        image_cache=None,
    ):
        """Jitted :meth:`Sam.decode` on this model's parameters (arguments and shapes there;
        ``text_embeddings`` ``(B, D)``: CLIP prompts, for a SAM with ``text_embed_dim``;
        ``image_cache``: :meth:`image_cache` of ``image_embeddings``).

        Returns low-res mask logits ``(B, K, S/4, S/4)`` and IoU predictions ``(B, K)``.
        """
        return _decode(
            self.module,
            self.decoder_params,
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            mask_inputs,
            box_valid,
            mask_valid,
            bool(multimask_output),
            text_embeddings,
            image_cache,
        )


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
      variant: a name of :data:`~sam_jax.modeling.variants.VARIANTS` (or ``"default"``),
        or a custom ``SamConfig``.
      checkpoint: an official ``.pth`` state_dict or our converted ``.npz``; None
        for random weights (seeded by ``seed``). Loading a checkpoint never runs the
        initialisers: the file is mapped onto :func:`param_template`.
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
        # No initialisation: the file is read onto the abstract (eval_shape) tree and its
        # arrays become device arrays (on the CPU without a copy: they are aligned views
        # of the mapped file or the one transposed copy of a kernel).
        params = jax.device_put(load_checkpoint(checkpoint, functools.partial(param_template, module)))
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


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, variant: str | SamConfig | None = None
) -> str:
    """Convert an official ``.pth`` to our ``.npz``.

    ``variant``: a variant name, a ``SamConfig``, or None to guess it from the
    weights. Returns the variant name (``"custom"`` for a ``SamConfig``).
    """
    state_dict = read_pth(src)
    variant = variant or guess_variant(state_dict)
    params = state_dict_to_params(state_dict, param_template(Sam(get_config(variant))))
    save_params(params, dst)
    return variant if isinstance(variant, str) else "custom"


__all__ = ["SamModel", "build_sam", "sam_model_registry", "convert_checkpoint", "compile_counts"]
