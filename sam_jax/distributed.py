"""Joining a multi-process (multi-host) jax run: the one place that reads the flags and env.

Training (``train/``) and dataset-scale mask generation
(:mod:`sam_jax.automatic_generation`) start their processes the same way:
``jax.distributed.initialize`` is automatic on TPU pods and under SLURM; elsewhere
it takes the coordinator address, the number of processes and this process's id
from a config mapping (``coordinator_address``, ``num_processes``, ``process_id``,
the training config's ``mesh`` section) or from the env variables
``SAM_JAX_COORDINATOR``, ``SAM_JAX_NUM_PROCESSES``, ``SAM_JAX_PROCESS_ID``.
"""

from __future__ import annotations

import os

import jax


def initialize_distributed(mesh_cfg=None) -> None:
    """Join a multi-process run if one is configured (no-op for a single process)."""
    get = lambda k, env, default: (
        mesh_cfg[k]
        if mesh_cfg is not None and k in mesh_cfg and mesh_cfg[k] not in ("", -1, None)
        else os.environ.get(env, default)
    )
    if jax.distributed.is_initialized():
        return
    addr = get("coordinator_address", "SAM_JAX_COORDINATOR", "")
    nproc = int(get("num_processes", "SAM_JAX_NUM_PROCESSES", -1))
    pid = int(get("process_id", "SAM_JAX_PROCESS_ID", -1))
    if addr:
        if nproc < 1 or pid < 0:
            raise ValueError(f"a coordinator address needs num_processes and process_id (got {nproc}, {pid})")
        jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)
    elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("SLURM_JOB_ID"):
        jax.distributed.initialize()


__all__ = ["initialize_distributed"]
