"""The train state and the pure, jitted, sharded train step.

Batches are in the format of :mod:`data.batch` (global arrays; the leading axis
sharded over ``batch``); only its ``DEVICE_KEYS`` go to the devices, the other
keys (ids, original sizes) stay on the host.

Masks with ``mask_valid`` False or fewer than ``loss.min_target_cells`` (>= 1) target
cells at ``R`` are ignored. Targets may be finer than the low-res logits
(``data.target_size`` ``T``, a multiple of ``R``): the losses then compare the logits
upsampled to ``T`` (:mod:`train.losses`), and the simulation samples its correction
clicks on the targets reduced to ``R`` (:func:`low_res_target`).

One step: embed the ``B`` images once (drop path active), broadcast each embedding
to its ``K`` masks (decoder batch ``n = B*K``), run the simulated interactive
prompting (:mod:`train.prompt_simulation`), the SAM losses (:mod:`train.losses`),
and one optimiser update (:mod:`train.optimizer`). The RNG of a step is
``fold_in(state.rng, state.step)``, so a restored state replays exactly.

Use :class:`Trainer` to build everything for a mesh::

    trainer = Trainer(config, mesh)
    state = trainer.init_state(seed)            # created sharded, never whole on a device
    state, metrics = trainer.step(state, trainer.to_global(host_batch))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data.batch import DEVICE_KEYS, FIELDS, batch_rank, majority_cells, sample_shape
from sam_jax.modeling.sam import Sam, SamConfig
from sam_jax.modeling.variants import get_config as get_sam_config
from sam_jax.modeling.variants import init_variables
from train import sharding as shd
from train.losses import LossConfig, sam_loss
from train.optimizer import build_optimizer
from train.prompt_simulation import SimConfig, region_valid_from_hw, simulate
from train.text_prompt import TextPromptConfig, clip_image_prompts, load_frozen_clip


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 scalar: updates done = the data position
    params: Any  # float32
    opt_state: Any  # float32
    rng: jax.Array  # uint32 raw key data (jax.random.key_data)


def text_config_from(config) -> TextPromptConfig:
    return TextPromptConfig.from_section(config.text) if "text" in config else TextPromptConfig()


def sam_config_from(config) -> SamConfig:
    """The SamConfig of ``model.variant`` with ``model.overrides`` applied (and the text
    prompt's width when ``text.enabled``)."""
    sam = get_sam_config(config.model.variant, **config.model.overrides)
    text = text_config_from(config)
    if text.enabled:
        sam = sam.replace(
            text_embed_dim=text.clip_config().embed_dim
            if not text.clip_checkpoint
            else _checkpoint_embed_dim(text.clip_checkpoint)
        )
    return sam


def _checkpoint_embed_dim(path: str) -> int:
    from sam_jax.clip.checkpoint import read_clip_state_dict

    return int(read_clip_state_dict(path)["text_projection"].shape[1])


def _dataclass_from(cls, section):
    """``cls`` (a dataclass) from the matching keys of a config section."""
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section})


def build_module(config) -> Sam:
    """The training module: float32 params, ``model.compute_dtype`` compute, drop path, remat."""
    dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[config.model.compute_dtype]
    return Sam(
        sam_config_from(config),
        drop_path_rate=float(config.model.drop_path_rate),
        remat_policy=config.model.remat_policy,
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def low_res_target(target: jax.Array, r: int) -> jax.Array:
    """``(n, T, T)`` bool GT -> ``(n, R, R)``: a cell is foreground where most of its
    ``(T/R)^2`` target pixels are (ties count as foreground); identity when ``T == R``.
    The simulation's error regions and ``loss.min_target_cells`` use this frame."""
    t = target.shape[-1]
    if t == r:
        return target
    if t % r:
        raise ValueError(f"data.target_size ({t}) must be a multiple of the low-res mask size ({r})")
    return majority_cells(target, r)


def compute_loss(
    module: Sam, sim: SimConfig, loss_cfg: LossConfig, params, batch, key, text: tuple | None = None
):
    """Scalar loss and metrics for one global batch (see module doc).

    ``text``: ``(TextPromptConfig, CLIP module, CLIP params)`` for CLIP-prompted first
    passes (:mod:`train.text_prompt`), or None.
    """
    c = module.config
    b, k = batch["masks"].shape[:2]
    k_drop, k_sim = jax.random.split(key)
    text_emb = text_first = None
    if text is not None:
        text_cfg, clip, clip_params = text
        k_sim, k_text = jax.random.split(k_sim)
        text_emb, text_first = clip_image_prompts(
            clip,
            clip_params,
            k_text,
            batch["image"],
            batch["masks"],
            batch["boxes"],
            batch["mask_valid"],
            text_cfg,
            c.image_size,
        )
    emb = module.apply(
        {"params": params},
        batch["image"],
        deterministic=False,
        method=Sam.embed_images,
        rngs={"dropout": k_drop},
    )
    emb = jnp.repeat(emb, k, axis=0)  # (n, g, g, E)
    emb = nn.with_logical_constraint(emb, ("batch", None, None, "act_embed"))

    def decode(coords, labels, boxes, box_valid, mask_inputs, mask_valid, multimask):
        return module.apply(
            {"params": params},
            emb,
            coords,
            labels,
            boxes,
            mask_inputs,
            multimask,
            box_valid,
            mask_valid,
            text_emb,
            text_first,
            method=Sam.decode,
        )

    flat = lambda x: x.reshape((b * k,) + x.shape[2:])
    target = flat(batch["masks"]).astype(bool)
    low = low_res_target(target, c.low_res_size)
    region = region_valid_from_hw(jnp.repeat(batch["resized_hw"], k, axis=0), c.low_res_size, c.image_size)
    out = simulate(
        decode,
        k_sim,
        low,
        flat(batch["points"]),
        flat(batch["boxes"]),
        sim,
        c.image_size,
        region,
        text_first,
    )
    # Masks whose target has fewer than loss.min_target_cells cells at R (e.g. a tiny
    # object that vanished at the low resolution) are not trained.
    cells = low.sum(axis=(1, 2))
    valid = flat(batch["mask_valid"]) & (cells >= max(loss_cfg.min_target_cells, 1))
    loss, metrics = sam_loss(out, target, valid, loss_cfg)
    if text is not None:
        metrics["text_prompted"] = (text_first & valid).sum().astype(jnp.float32)
    return loss, metrics


def train_step(
    state: TrainState,
    batch: dict,
    clip_params: Any = None,
    *,
    module: Sam,
    tx,
    schedule,
    sim: SimConfig,
    loss_cfg: LossConfig,
    text_cfg: Any = None,
    clip: Any = None,
):
    """Pure: ``(state, batch[, clip_params]) -> (new state, metrics)`` (scalars)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    text = None if clip is None else (text_cfg, clip, clip_params)
    grad_fn = jax.value_and_grad(functools.partial(compute_loss, module, sim, loss_cfg), has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, key, text)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class Trainer:
    """Module, optimiser, shardings and the jitted init / step for one mesh."""

    def __init__(self, config, mesh: jax.sharding.Mesh):
        self.config = config
        self.mesh = mesh
        self.rules = shd.rules_tuple(config.mesh.axis_rules)
        self.module = build_module(config)
        boxed = jax.eval_shape(functools.partial(init_variables, self.module), jax.random.key(0))["params"]
        self.abstract_params = nn.unbox(boxed)
        self.tx, self.schedule = build_optimizer(
            config.optim, self.abstract_params, self.module.config.encoder_depth
        )
        self.param_shardings = shd.param_shardings(boxed, mesh, self.rules)
        abstract = jax.eval_shape(self._init, jax.random.key_data(jax.random.key(0)))
        self.state_shardings = shd.state_shardings(abstract, self.param_shardings, mesh)
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, self.state_shardings
        )
        self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._init_jit = jax.jit(self._init, out_shardings=self.state_shardings)
        self.text_cfg = text_config_from(config)
        self.clip = self.clip_params = None
        if self.text_cfg.enabled:  # frozen CLIP for the text-prompted passes, replicated
            frozen = load_frozen_clip(self.text_cfg, self.module.dtype)
            self.clip = frozen.module
            self.clip_params = jax.device_put(frozen.params, self.replicated)
        step = functools.partial(
            train_step,
            module=self.module,
            tx=self.tx,
            schedule=self.schedule,
            sim=_dataclass_from(SimConfig, config.sim),
            loss_cfg=_dataclass_from(LossConfig, config.loss),
            text_cfg=self.text_cfg,
            clip=self.clip,
        )
        self._step_jit = jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_shardings(), self.replicated),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )

    def _init(self, rng_data, params=None):
        key = jax.random.wrap_key_data(rng_data)
        k_init, k_train = jax.random.split(key)
        if params is None:
            params = nn.unbox(init_variables(self.module, k_init)["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            rng=jax.random.key_data(k_train),
        )

    def batch_shardings(self) -> dict:
        return {k: shd.batch_sharding(self.mesh, self.rules, batch_rank(k)) for k in DEVICE_KEYS}

    def _ctx(self):
        return _Context(self.mesh, self.rules)

    def init_state(self, seed: int, params: Any = None) -> TrainState:
        """A fresh state created directly sharded (``params``: e.g. an official checkpoint;
        without a text projection one is initialised when text prompts are enabled)."""
        rng = jax.random.key_data(jax.random.key(seed))
        with self._ctx():
            if params is None:
                return self._init_jit(rng)
            if self.text_cfg.enabled and "text_proj" not in params["prompt_encoder"]:
                fresh = nn.unbox(
                    jax.jit(init_variables, static_argnums=0)(self.module, jax.random.key(seed))["params"]
                )
                params = dict(
                    params,
                    prompt_encoder=dict(
                        params["prompt_encoder"], text_proj=fresh["prompt_encoder"]["text_proj"]
                    ),
                )
            params = jax.device_put(params, self.param_shardings)
            return jax.jit(self._init, out_shardings=self.state_shardings)(rng, params)

    def to_global(self, host_batch: dict) -> dict:
        return shd.global_batch({k: host_batch[k] for k in DEVICE_KEYS}, self.mesh, self.rules)

    def load_init_params(self, path: str) -> Any:
        """Params of ``model.init_checkpoint`` (an official ``.pth`` or our ``.npz``); a
        checkpoint without the text projection is read with the text prompt off."""
        from sam_jax.checkpoint import CheckpointMismatchError, load_checkpoint
        from sam_jax.modeling.variants import param_template

        try:
            return load_checkpoint(path, param_template(self.module))
        except CheckpointMismatchError:
            if not self.text_cfg.enabled:
                raise
            return load_checkpoint(
                path, param_template(self.module.clone(config=self.module.config.replace(text_embed_dim=0)))
            )

    def step(self, state: TrainState, batch: dict):
        with self._ctx():
            return self._step_jit(state, batch, self.clip_params)

    def lower(self, state, batch):
        with self._ctx():
            return self._step_jit.lower(state, batch, self.clip_params)

    def precompile(self, target_size: int, init: bool = True) -> None:
        """Compile :meth:`step` (and, with ``init``, :meth:`init_state` without ``params``)
        for this config's global batches (mask targets ``target_size`` square) before their
        first call, which then finds the executables compiled: a caller can overlap the
        compilation with other work (``train.demo`` writes its shards meanwhile)."""
        d, size = self.config.data, self.module.config.image_size
        batch = {
            k: jax.ShapeDtypeStruct(
                (d.global_batch_size,) + sample_shape(k, size, target_size, d.masks_per_image),
                FIELDS[k][0],
                sharding=sh,
            )
            for k, sh in self.batch_shardings().items()
        }
        if init:
            rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
            with self._ctx():
                self._init_jit.lower(rng).compile()
        self.lower(self.abstract_state, batch).compile()


class _Context:
    """Mesh + logical axis rules active while tracing (for ``nn.with_logical_constraint``)."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._m = jax.set_mesh(self.mesh)
        self._r = nn.logical_axis_rules(self.rules)
        self._m.__enter__()
        self._r.__enter__()

    def __exit__(self, *exc):
        self._r.__exit__(*exc)
        self._m.__exit__(*exc)


def host_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
