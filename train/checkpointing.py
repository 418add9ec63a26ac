"""Orbax checkpoints: periodic async saves, keep the last N, save on SIGTERM, exact resume.

The whole :class:`train.train_step.TrainState` is saved (params, optimiser state,
``step`` = the data position, ``rng`` = the RNG state), so a restored run replays
the same batches (the data pipeline restarts at ``start_step = step``) and the same
random numbers (``fold_in(rng, step)``).

Partially written checkpoints: orbax writes into a temporary directory and
renames it when complete; :meth:`Checkpointer.restore_latest` additionally tries
the steps newest first and falls back to an older one if a step directory cannot
be read (e.g. half-written by a killed process on a filesystem without atomic
renames); the unreadable directory is renamed ``<step>.unreadable-<pid>``.

Preemption: :class:`PreemptionFlag` turns SIGTERM into a flag that the loop polls
after each step; it then saves synchronously and exits with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=True))

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as ``step`` (asynchronously unless configured off); the loop
        decides when (every ``ckpt.every`` steps, at the end, on preemption)."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore_latest(self, abstract_state: Any) -> Any | None:
        """The newest readable checkpoint as a state sharded like ``abstract_state``
        (a tree of ``jax.ShapeDtypeStruct`` with shardings), or None if there is none.

        A step directory that cannot be restored, holds another step, or is newer than
        the restored one without being listed by orbax (no commit marker) is moved aside.
        """
        self.manager.reload()
        restored, restored_step = None, -1
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                got = int(jax.device_get(state.step))
                if got != step:
                    raise ValueError(f"directory {step} holds step {got}")
                restored, restored_step = state, step
                break
            except Exception as e:  # noqa: BLE001 - a broken step must not stop the resume
                log.warning("checkpoint step %d in %s unreadable (%s: %s); moved aside, trying "
                            "an older one", step, self.directory, type(e).__name__, e)
                self._move_aside(step)
        uncommitted = sorted(int(n) for n in os.listdir(self.directory)
                             if n.isdigit() and int(n) > restored_step)
        _barrier("ckpt_listed")  # every process lists before process 0 renames anything
        for step in uncommitted:
            log.warning("checkpoint step %d in %s incomplete (not committed); moved aside",
                        step, self.directory)
            self._move_aside(step)
        return restored

    def _move_aside(self, step: int) -> None:
        """Rename an unreadable step directory so that it is neither restored nor blocks a
        new save of that step (process 0 renames; all wait)."""
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            if os.path.isdir(src):
                os.replace(src, f"{src}.unreadable-{os.getpid()}")
        _barrier(f"ckpt_move_aside_{step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _barrier(name: str) -> None:
    """Wait for every process (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class PreemptionFlag:
    """SIGTERM (and SIGINT if asked) -> ``flag.set``; restores the old handlers on ``close``."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.set = False
        self.signum = None
        self._old = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame):
        self.signum = signum
        self.set = True

    def close(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def any_process_preempted(flag: PreemptionFlag) -> bool:
    """True on every process if any got the signal (all must save together)."""
    if jax.process_count() == 1:
        return flag.set
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag.set))).max())
