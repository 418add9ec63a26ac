"""Device mesh, logical-axis sharding, sharded state and global batches; multi-host init.

* :func:`initialize_distributed` (:mod:`sam_jax.distributed`): ``jax.distributed.initialize``
  - automatic on TPU pods / SLURM; elsewhere from the config (``mesh.coordinator_address``,
  ``mesh.num_processes``, ``mesh.process_id``) or the env variables
  ``SAM_JAX_COORDINATOR``, ``SAM_JAX_NUM_PROCESSES``, ``SAM_JAX_PROCESS_ID``.
* :func:`make_mesh`: a mesh with axes ``data``, ``fsdp`` (and optional ``tensor``)
  from ``mesh.shape`` (one size may be ``-1``: all remaining devices).
* Logical names -> mesh axes through the ONE rules table in ``configs/base.py``
  (``mesh.axis_rules``). A parameter dimension that the mapped mesh axes do not
  divide is replicated instead (e.g. the IoU head's 4-wide output on 8-way fsdp).
* :func:`state_shardings`: shardings of a whole train state: params from their
  logical annotations, optimiser-state leaves from the parameter whose path they
  end with (Adam moments), anything else replicated.
* :func:`global_batch`: per-host numpy batches -> global ``jax.Array`` sharded over
  ``batch`` (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sam_jax.distributed import initialize_distributed  # noqa: F401 - re-exported for train/


def make_mesh(shape: dict, devices=None) -> Mesh:
    """Mesh from ``{axis: size}`` (at most one ``-1``); ``data``, ``fsdp`` and ``tensor``
    default to size 1 (so that every mesh axis named by the rules exists)."""
    shape = dict(shape)
    for axis in ("data", "fsdp", "tensor"):
        shape.setdefault(axis, 1)
    devices = jax.devices() if devices is None else list(devices)
    known = math.prod(v for v in shape.values() if v != -1)
    free = [k for k, v in shape.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    if free:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
        shape[free[0]] = len(devices) // known
    if math.prod(shape.values()) != len(devices):
        raise ValueError(f"mesh {shape} needs {math.prod(shape.values())} devices, have {len(devices)}")
    names = tuple(shape)
    arr = np.asarray(devices).reshape(tuple(shape[k] for k in names))
    return Mesh(arr, names)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Replicate the dimensions that the mesh axes do not divide; drop absent axes."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        names = tuple(a for a in names if a in mesh.shape)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(None if not names or dim % size else (names[0] if len(names) == 1 else names))
    return P(*out)


def rules_tuple(rules) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in rules)


def logical_sharding(logical: tuple, shape: tuple[int, ...], mesh: Mesh, rules) -> NamedSharding:
    """A NamedSharding for an array of ``shape`` with logical axis names ``logical``."""
    spec = nn.logical_to_mesh_axes(logical, rules_tuple(rules))
    return NamedSharding(mesh, _fit(spec, shape, mesh))


def param_shardings(boxed_abstract_params: Any, mesh: Mesh, rules) -> Any:
    """Shardings of an (abstract) param tree boxed with ``nn.LogicallyPartitioned``."""
    specs = nn.get_partition_spec(boxed_abstract_params)
    shapes = nn.unbox(boxed_abstract_params)
    return jax.tree_util.tree_map(
        lambda spec, x: logical_sharding(tuple(spec), x.shape, mesh, rules),
        specs,
        shapes,
        is_leaf=lambda s: isinstance(s, P),
    )


def _dict_keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(abstract_state: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a whole state pytree (see module doc)."""
    by_path = {_dict_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_sharding)[0]}
    replicated = NamedSharding(mesh, P())

    def pick(path, x):
        keys = _dict_keys(path)
        for i in range(len(keys)):
            s = by_path.get(keys[i:])
            if s is not None and len(s.spec) <= x.ndim:
                return NamedSharding(mesh, _fit(s.spec, x.shape, mesh))
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def batch_sharding(mesh: Mesh, rules, ndim: int = 1) -> NamedSharding:
    """Leading axis over the ``batch`` rule's mesh axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules_tuple(rules))
    return NamedSharding(mesh, spec)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
    """Per-process numpy batch (this host's rows) -> global arrays sharded over ``batch``.

    Every process passes its own ``B / process_count`` rows; the global leading size is
    ``B``. Leading sizes must divide by the number of devices along the batch axes.
    """
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        sh = batch_sharding(mesh, rules, v.ndim)
        gshape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(sh, v, gshape)
    return out
