"""Orbax checkpoints: periodic async saves, keep the last N, save on SIGTERM, exact resume.

The whole :class:`train.train_step.TrainState` is saved (params, optimiser state,
``step`` = the data position, ``rng`` = the RNG state), so a restored run replays
the same batches (the data pipeline restarts at ``start_step = step``) and the same
random numbers (``fold_in(rng, step)``).

What counts as a checkpoint: a step directory ``<step>`` holding orbax's commit
marker (``commit_success.txt``, or a commit timestamp in ``_CHECKPOINT_METADATA``),
both written just before orbax renames a finished save into place. A step directory
without one (an empty or foreign ``mkdir``, a save interrupted on a filesystem
without atomic renames) is ignored: it decides neither the latest step nor the
layout, and is moved aside (``<step>.unreadable-<pid>``) only when a save needs its
name. The single-item layout (one ``StandardSave`` per step) is fixed up front.

:meth:`Checkpointer.restore_latest` tries the committed steps newest first:

* a checkpoint whose tree or shapes differ from the model's (a changed model config)
  raises :class:`CheckpointMismatchError` naming the differing leaves; nothing on
  disk changes;
* a checkpoint that cannot be read (I/O or format error, or it holds another step)
  is skipped for an older one, and renamed ``<step>.unreadable-<pid>`` unless the
  checkpointer is ``read_only`` (``train.evaluate`` never renames or deletes).

Preemption: :class:`PreemptionFlag` turns SIGTERM into a flag that the loop polls
after each step; it then saves synchronously and exits with status 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from sam_jax.checkpoint import CheckpointMismatchError, describe_mismatch

log = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"


def is_committed(step_dir: str) -> bool:
    """Whether ``step_dir`` holds orbax's commit marker (see the module doc)."""
    if os.path.isfile(os.path.join(step_dir, COMMIT_MARKER)):
        return True
    try:
        with open(os.path.join(step_dir, "_CHECKPOINT_METADATA")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("commit_timestamp_nsecs") is not None


class _CommittedSteps(ocp.path.step.NameFormat):
    """orbax's standard step names (``<step>``), listing only committed step directories."""

    single_host_load_and_broadcast = False

    def __init__(self):
        self._names = ocp.path.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self._names.build_name(step)

    def find_all(self, base_path) -> Iterator[Any]:
        return (m for m in self._names.find_all(base_path) if is_committed(os.fspath(m.path)))

    def find_step(self, base_path, step: int) -> Any:
        m = self._names.find_step(base_path, step)
        if not is_committed(os.fspath(m.path)):
            raise ValueError(f"step {step} under {base_path} is not committed")
        return m


class Checkpointer:
    """Saves and restores :class:`TrainState` under ``directory`` (see the module doc).

    ``read_only``: never create, rename or delete anything (for evaluation).
    """

    def __init__(self, directory: str, keep: int, async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),  # single-item layout, fixed
            options=ocp.CheckpointManagerOptions(
                step_name_format=_CommittedSteps(),
                enable_async_checkpointing=async_save,
                **(
                    dict(read_only=True, create=False, save_interval_steps=0)
                    if read_only
                    else dict(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
                ),
            ),
        )

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as ``step`` (asynchronously unless configured off); the loop
        decides when (every ``ckpt.every`` steps, at the end, on preemption)."""
        if self.read_only:
            raise PermissionError(f"checkpointer of {self.directory} is read-only")
        path = os.path.join(self.directory, str(step))
        if os.path.isdir(path) and not is_committed(path):
            log.warning(
                "checkpoint step %d in %s incomplete (not committed); moved aside", step, self.directory
            )
            self.manager.wait_until_finished()  # the reload below must list a pending save
            self._move_aside(step)
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore_latest(self, abstract_state: Any) -> Any | None:
        """The newest readable checkpoint as a state sharded like ``abstract_state``
        (a tree of ``jax.ShapeDtypeStruct`` with shardings), or None if there is none.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint's tree or shapes differ
            from ``abstract_state`` (nothing is renamed).
        """
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._check_fits(step, abstract_state)
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                got = int(jax.device_get(state.step))
                if got != step:
                    raise ValueError(f"directory {step} holds step {got}")
                return state
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - I/O or format: a broken step must not stop the resume
                log.warning(
                    "checkpoint step %d in %s unreadable (%s: %s); %s, trying an older one",
                    step,
                    self.directory,
                    type(e).__name__,
                    e,
                    "skipped" if self.read_only else "moved aside",
                )
                if not self.read_only:
                    self._move_aside(step)
        return None

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        """Compare the leaves (paths, shapes) stored for ``step`` with ``abstract_state``."""
        stored = ocp.tree.to_flat_dict(self.manager.item_metadata(step) or {}, sep="/")
        if not stored:  # a format error, not a different model
            raise ValueError("the checkpoint lists no arrays (its _METADATA is missing or empty)")
        wanted = ocp.tree.to_flat_dict(abstract_state, sep="/")
        missing = sorted(set(wanted) - set(stored))
        unexpected = sorted(set(stored) - set(wanted))
        shapes = sorted(
            f"{k}: model {tuple(wanted[k].shape)}, checkpoint {tuple(stored[k].shape)}"
            for k in set(wanted) & set(stored)
            if tuple(wanted[k].shape) != tuple(stored[k].shape)
        )
        if missing or unexpected or shapes:
            raise CheckpointMismatchError(
                f"checkpoint {os.path.join(self.directory, str(step))} does not fit the model "
                f"(was the model config changed?): {describe_mismatch(missing, unexpected, shapes)}"
            )

    def _move_aside(self, step: int) -> None:
        """Rename a step directory so that it is neither restored nor blocks a new save of
        that step (process 0 renames; all wait)."""
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
