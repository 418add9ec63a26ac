"""Shared training values and the ONE logical-axis-rules table.

Every variant file (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``) calls
:func:`base_config` and overrides what differs; nothing else defines defaults.

Config keys (``ml_collections.ConfigDict``):

* ``model``: ``variant`` (``vit_b``/``vit_l``/``vit_h``), ``overrides`` (SamConfig
  fields that replace the variant's, through ``sam_jax.modeling.variants.get_config``), ``drop_path_rate``,
  ``remat_policy`` (``none``/``full``/a ``jax.checkpoint_policies`` name),
  ``compute_dtype`` (``bfloat16``/``float32``; params and optimiser state are float32),
  ``init_checkpoint`` (an official ``.pth``/our ``.npz`` for fine-tuning, ``""`` = scratch).
* ``sim``: interactive prompt simulation (``train.prompt_simulation``):
  ``num_passes`` (11), ``num_correction_points`` (8), ``box_prob`` (0.5),
  ``box_noise_frac`` (0.1), ``box_noise_max`` (20 px), ``point_in_cell``
  (``uniform``/``centre``), ``farthest_prob`` (0: the probability that a point is the
  evaluation protocol's click, farthest from its region's boundary), ``unroll`` (of
  the pass loop), ``remat`` (recompute each decoder pass in the backward pass: less
  memory for more masks or images).
* ``loss``: ``focal_weight`` (20), ``dice_weight`` (1), ``iou_weight`` (1),
  ``focal_alpha`` (0.25), ``focal_gamma`` (2), ``resolution`` (0 = the GT targets'
  resolution; larger = upsample logits bilinearly and targets by repetition),
  ``min_target_cells`` (masks with fewer GT cells at the target resolution are ignored).
* ``optim``: ``lr``, ``b1``, ``b2``, ``eps``, ``weight_decay``, ``layer_decay``,
  ``warmup_steps``, ``decay_steps`` (x ``decay_factor`` at each), ``grad_clip_norm``
  (0 = off).
* ``mesh``: ``shape`` (dict axis -> size, one ``-1`` = the remaining devices),
  ``axis_rules`` (the table below), multi-host ``coordinator_address``,
  ``num_processes``, ``process_id`` (empty/-1 = from env or automatic).
* ``data``: ``train_dir`` / ``eval_dir`` (SA-1B shards: a directory of ``*.tar`` or a
  glob; ``train_dir`` may also be a mixture of sources ``[(dir or glob, weight), ...]``
  or ``[(dir or glob, weight, name), ...]``, each sample drawn from a source with
  probability ``weight / sum(weights)``: ``data.subsets``), ``masks_per_image``,
  ``global_batch_size``, ``seed``, ``max_mask_area_frac``, ``synthetic`` (train on
  in-memory synthetic batches, no tensorflow), ``synthetic_images`` (> 0: a finite
  synthetic corpus of that many images instead of an endless stream), ``fraction``
  (train on this fraction of the images, chosen by image id: ``data.subsets``),
  ``target_size`` (side of the GT mask targets: 0 = the low-res logits' ``S/4``; a
  multiple of it, up to ``S``, trains on finer targets: ``train.losses``), ``drop_bad``
  (SA-1B shards: leave out images without a usable mask, or unreadable ones, instead of
  keeping their batch slots empty; resuming then re-reads the records before the
  checkpoint: ``data.pipeline``), ``cache_mb`` (keep up to that many MiB of decoded
  records for the next epochs: ``data.pipeline``; 0 = off).
* ``text``: CLIP prompts (``train.text_prompt``, paper section 7.5): ``enabled``,
  ``clip`` (``ViT-L/14@336px``/``ViT-B/16``/``custom`` with ``clip_custom`` fields),
  ``clip_checkpoint`` (OpenAI ``.pt``; ``""`` = random CLIP, for tests), ``clip_seed``,
  ``min_mask_side`` (masks with area > side^2 px qualify), ``crop_scale``,
  ``zero_outside_prob``, ``masked_attention``, ``masks_per_image`` (0 = all qualifying).
* ``train``: ``num_steps``, ``seed``, ``log_every``, ``workdir``;
  ``ckpt``: ``every``, ``keep``, ``async_save``.
"""

from __future__ import annotations

import ml_collections

# Logical axis name (as annotated in sam_jax.modeling) -> mesh axis/axes.
# Weights: ``embed`` is FSDP-sharded, ``mlp``/``heads`` tensor-parallel.
# Activations: the batch over data x fsdp, the residual stream replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("act_embed", None),
)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        variant="vit_b",
        overrides={},
        drop_path_rate=0.0,
        remat_policy="none",
        compute_dtype="bfloat16",
        init_checkpoint="",
    )
    c.sim = dict(
        num_passes=11,
        num_correction_points=8,
        box_prob=0.5,
        box_noise_frac=0.1,
        box_noise_max=20.0,
        point_in_cell="uniform",
        farthest_prob=0.0,
        unroll=1,
        remat=False,
    )
    c.loss = dict(
        focal_weight=20.0,
        dice_weight=1.0,
        iou_weight=1.0,
        focal_alpha=0.25,
        focal_gamma=2.0,
        resolution=0,
        min_target_cells=1,
    )
    c.optim = dict(
        lr=8e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        layer_decay=0.8,
        warmup_steps=250,
        decay_steps=(60000, 86666),
        decay_factor=0.1,
        grad_clip_norm=0.0,
    )
    c.mesh = dict(
        shape={"data": -1, "fsdp": 1, "tensor": 1},
        axis_rules=LOGICAL_AXIS_RULES,
        coordinator_address="",
        num_processes=-1,
        process_id=-1,
    )
    c.data = dict(
        # a str (one source) or a list of (glob, weight[, name]) (a mixture)
        train_dir=ml_collections.FieldReference("", field_type=object),
        eval_dir="",
        masks_per_image=64,
        global_batch_size=256,
        seed=0,
        max_mask_area_frac=0.9,
        synthetic=False,
        synthetic_images=0,
        fraction=1.0,
        target_size=0,
        drop_bad=False,
        cache_mb=0,
    )
    c.text = dict(
        enabled=False,
        clip="ViT-L/14@336px",
        clip_custom={},
        clip_checkpoint="",
        clip_seed=0,
        min_mask_side=100.0,
        crop_scale=(1.0, 2.0),
        zero_outside_prob=0.5,
        masked_attention=True,
        masks_per_image=0,
    )
    c.train = dict(num_steps=90000, seed=0, log_every=50, workdir="/tmp/sam_jax_train")
    c.ckpt = dict(every=1000, keep=3, async_save=True)
    return c


def paper_variant(
    variant: str, lr: float, layer_decay: float, drop_path: float, num_steps: int, batch: int
) -> ml_collections.ConfigDict:
    """A paper recipe (REFERENCE section 6): the lr steps sit at 2/3 and ~96% of training."""
    c = base_config()
    c.model.variant = variant
    c.model.drop_path_rate = drop_path
    c.model.remat_policy = "full"
    c.optim.lr = lr
    c.optim.layer_decay = layer_decay
    c.optim.decay_steps = (num_steps * 2 // 3, num_steps * 26 // 27)
    c.train.num_steps = num_steps
    c.data.global_batch_size = batch
    return c


class ConfigError(ValueError):
    """A training config value or key is invalid."""


# Allowed ranges of the numeric keys: (low, high); a bound of None is open.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "train.num_steps": (1, None),
    "train.log_every": (1, None),
    "ckpt.every": (1, None),
    "ckpt.keep": (1, None),
    "data.global_batch_size": (1, None),
    "data.masks_per_image": (1, None),
    "data.max_mask_area_frac": (0, 1),
    "data.target_size": (0, None),
    "data.cache_mb": (0, None),
    "sim.num_passes": (1, None),
    "sim.num_correction_points": (0, None),
    "sim.box_prob": (0, 1),
    "sim.box_noise_frac": (0, None),
    "sim.box_noise_max": (0, None),
    "sim.unroll": (1, None),
    "loss.focal_weight": (0, None),
    "loss.dice_weight": (0, None),
    "loss.iou_weight": (0, None),
    "loss.focal_alpha": (0, 1),
    "loss.focal_gamma": (0, None),
    "loss.resolution": (0, None),
    "loss.min_target_cells": (0, None),
    "optim.lr": (0, None),
    "optim.b1": (0, 1),
    "optim.b2": (0, 1),
    "optim.eps": (0, None),
    "optim.weight_decay": (0, None),
    "optim.layer_decay": (0, 1),
    "optim.warmup_steps": (0, None),
    "optim.decay_factor": (0, None),
    "optim.grad_clip_norm": (0, None),
    "model.drop_path_rate": (0, 1),
}
_CHOICES = {
    "model.variant": ("vit_b", "vit_l", "vit_h", "default", "custom"),
    "model.compute_dtype": ("bfloat16", "float32"),
    "sim.point_in_cell": ("uniform", "centre"),
}


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check a training config before anything is built; returns it.

    Unknown sections and keys (against :func:`base_config`), values out of range
    (``_RANGES``), unknown choices, and a ``data.global_batch_size`` that does not
    divide over the fixed ``data`` x ``fsdp`` mesh axes or the processes.

    Raises:
      ConfigError: naming the key and what is allowed.
    """
    known = base_config()
    for section in config:
        if section not in known:
            raise ConfigError(f"unknown config section {section!r}; sections are {', '.join(sorted(known))}")
        for key in config[section]:
            if key not in known[section]:
                raise ConfigError(
                    f"unknown config key '{section}.{key}'; {section} has {', '.join(sorted(known[section]))}"
                )
    for name, (lo, hi) in _RANGES.items():
        section, key = name.split(".")
        v = config[section][key]
        rng = f"[{lo}, {'inf' if hi is None else hi}]"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name} must be a number in {rng}, got {v!r}")
        if isinstance(known[section][key], int) and not isinstance(v, int):
            raise ConfigError(f"{name} must be an integer in {rng}, got {v!r}")
        if v != v or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{name} must be in {rng}, got {v!r}")
    for name, allowed in _CHOICES.items():
        section, key = name.split(".")
        if config[section][key] not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {config[section][key]!r}")
    batch = config.data.global_batch_size
    shape = dict(config.mesh.shape)
    split = 1
    for axis in ("data", "fsdp"):
        n = shape.get(axis, 1)
        if not isinstance(n, int) or (n < 1 and n != -1):
            raise ConfigError(f"mesh.shape.{axis} must be an integer >= 1 or -1, got {n!r}")
        split *= max(n, 1)
    if batch % split:
        raise ConfigError(
            f"data.global_batch_size={batch} must be divisible by the data x fsdp mesh axes ({split})"
        )
    procs = config.mesh.num_processes
    if isinstance(procs, int) and procs > 0 and batch % procs:
        raise ConfigError(f"data.global_batch_size={batch} must be divisible by mesh.num_processes={procs}")
    from data.subsets import is_mixture, mixture_sources  # numpy only

    if not isinstance(config.data.train_dir, str) and is_mixture(config.data.train_dir):
        try:
            mixture_sources(config.data.train_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return config
