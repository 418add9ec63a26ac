"""Checkpoints: SIGKILL + resume replays exactly, SIGTERM saves and exits cleanly, a
half-written step directory does not break the restore of the previous one.

Each run is ``python -m train`` in a subprocess (tiny config, 3 passes, in-memory
synthetic data, a checkpoint every step, metrics of every step in
``<workdir>/metrics.jsonl``). The session's persistent XLA compilation cache
(``tests/conftest.py``, exported to the subprocesses) lets only the first run compile.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = [
    "--config.sim.num_passes=3",
    "--config.sim.num_correction_points=1",
    "--config.sim.unroll=1",
    "--config.data.masks_per_image=4",
    "--config.data.global_batch_size=4",
    "--config.data.synthetic=True",
    "--config.ckpt.every=1",
    "--config.ckpt.keep=10",
    "--config.train.log_every=1",
]


def _cmd(workdir, steps):
    return [
        sys.executable,
        "-m",
        "train",
        "--config",
        "configs/tiny.py",
        *OVERRIDES,
        f"--config.train.workdir={workdir}",
        f"--config.train.num_steps={steps}",
    ]


def _env():
    # single-threaded Eigen: bitwise identical runs even when the CPUs are contended
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")
    return env


def _losses(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            out[m["step"]] = m["loss"]
    return out


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _start_and_wait(workdir, steps, until_step):
    """Start a run; return (process, stopped) once checkpoint ``until_step`` is complete,
    with the process SIGSTOPped (so it cannot run further)."""
    p = subprocess.Popen(
        _cmd(workdir, steps),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marker = os.path.join(workdir, "checkpoints", str(until_step), "_CHECKPOINT_METADATA")
    t0 = time.time()
    while not os.path.exists(marker):
        if p.poll() is not None:
            raise AssertionError(f"run ended early ({p.returncode}):\n{p.stdout.read()[-4000:]}")
        if time.time() - t0 > 600:
            p.kill()
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGSTOP)
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("uninterrupted"))
    r = subprocess.run(_cmd(wd, 6), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    losses = _losses(wd)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    return losses


def test_sigkill_resume_and_half_written_checkpoint(reference, tmp_path):
    wd = str(tmp_path / "run")
    p = _start_and_wait(wd, 1000, 3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = _steps(wd)
    last = max(done)
    assert 3 <= last < 6, done
    ck = os.path.join(wd, "checkpoints")
    # a step directory interrupted mid-write (as on a filesystem without atomic renames):
    # no commit markers, array data truncated
    broken = os.path.join(ck, str(last + 1))
    shutil.copytree(os.path.join(ck, str(last)), broken)
    for root, _, files in os.walk(broken):
        for f in files:
            path = os.path.join(root, f)
            if f == "commit_success.txt":
                os.remove(path)
            elif os.sep + "d" + os.sep in path:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 3)
    # and orbax's own temporary directory of an unfinished save
    os.makedirs(os.path.join(ck, f"{last + 2}.orbax-checkpoint-tmp-12345", "state"))
    # and a foreign (uncommitted) directory: it must decide neither the latest step nor
    # the layout, and no real checkpoint may be renamed because of it
    os.makedirs(os.path.join(ck, "999"))
    r = subprocess.run(_cmd(wd, 6), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f'"start_step": {last}' in r.stdout, r.stdout[-2000:]
    assert f"step {last + 1} in" in r.stderr  # the broken step was skipped (and moved aside)
    got = _losses(wd)
    assert max(got) == 6
    for step in range(1, 7):
        assert abs(got[step] - reference[step]) <= 1e-6, (step, got[step], reference[step])
    assert _steps(wd) == [1, 2, 3, 4, 5, 6, 999]
    assert os.listdir(os.path.join(ck, "999")) == []
    aside = [n for n in os.listdir(ck) if ".unreadable-" in n]
    assert len(aside) == 1 and aside[0].startswith(f"{last + 1}.unreadable-"), aside


def test_sigterm_saves_and_exits_cleanly(reference, tmp_path):
    wd = str(tmp_path / "run")
    p = _start_and_wait(wd, 1000, 2)
    os.kill(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGCONT)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert "preempted (signal 15)" in out
    losses = _losses(wd)
    last = max(losses)
    assert max(_steps(wd)) == last and last < 1000
    for step in range(1, min(last, 6) + 1):
        assert abs(losses[step] - reference[step]) <= 1e-6, (step, losses, reference)


# ----------------------------------------------------------- the Checkpointer in process
def _state(step, width=3, extra=False):
    import jax.numpy as jnp

    from train.train_step import TrainState

    params = {"w": jnp.full((width,), float(step))}
    if extra:
        params["b"] = jnp.zeros((2,))
    return TrainState(
        step=jnp.int32(step),
        params=params,
        opt_state={"mu": jnp.zeros((width,))},
        rng=jnp.zeros((2,), jnp.uint32),
    )


def _abstract(state):
    import jax

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _listing(directory):
    return sorted(
        os.path.relpath(os.path.join(r, f), directory) for r, ds, fs in os.walk(directory) for f in fs + ds
    )


@pytest.fixture
def saved(tmp_path):
    """Steps 1 and 2 of a small state saved by the Checkpointer."""
    from train.checkpointing import Checkpointer

    d = str(tmp_path / "checkpoints")
    ck = Checkpointer(d, keep=5, async_save=False)
    ck.save(1, _state(1))
    ck.save(2, _state(2))
    ck.close()
    return d


def test_uncommitted_step_directories_decide_nothing(saved):
    """An empty/foreign ``mkdir 999`` is neither the latest step nor the layout, and no real
    checkpoint is renamed because of it; it is moved aside only when a save needs its name."""
    import jax

    from train.checkpointing import Checkpointer

    os.makedirs(os.path.join(saved, "999"))
    os.makedirs(os.path.join(saved, "3", "default"))  # an interrupted save of step 3
    before = _listing(saved)
    ck = Checkpointer(saved, keep=5, async_save=False)
    state = ck.restore_latest(_abstract(_state(0)))
    assert int(state.step) == 2 and ck.manager.latest_step() == 2
    np.testing.assert_array_equal(jax.device_get(state.params["w"]), [2.0, 2.0, 2.0])
    assert _listing(saved) == before
    ck.save(3, _state(3))
    ck.close()
    names = sorted(os.listdir(saved))
    assert "999" in names and "1" in names and "2" in names
    assert [n for n in names if ".unreadable-" in n] == [f"3.unreadable-{os.getpid()}"]
    ck = Checkpointer(saved, keep=5, async_save=False, read_only=True)
    assert int(ck.restore_latest(_abstract(_state(0))).step) == 3
    ck.close()


def test_a_changed_model_is_an_error_and_changes_nothing(saved):
    from sam_jax.checkpoint import CheckpointMismatchError
    from train.checkpointing import Checkpointer

    before = _listing(saved)
    for read_only in (False, True):
        ck = Checkpointer(saved, keep=5, async_save=False, read_only=read_only)
        with pytest.raises(CheckpointMismatchError) as err:
            ck.restore_latest(_abstract(_state(0, width=4, extra=True)))
        ck.close()
        msg = str(err.value)
        assert "checkpoints/2 does not fit the model" in msg
        assert "1 missing (params/b)" in msg
        assert "2 with wrong shapes (opt_state/mu: model (4,), checkpoint (3,); params/w" in msg
    assert _listing(saved) == before


@pytest.mark.parametrize("damage", ["truncated arrays", "no tree metadata"])
def test_corrupt_checkpoints_are_set_aside_only_when_not_read_only(saved, damage):
    """I/O or format errors (not a different model) skip to an older checkpoint."""
    from train.checkpointing import Checkpointer

    if damage == "no tree metadata":
        os.remove(os.path.join(saved, "2", "default", "_METADATA"))
    for root, _, files in os.walk(os.path.join(saved, "2")):
        for f in files:
            if damage == "truncated arrays" and os.sep + "d" + os.sep in os.path.join(root, f):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(3)
    before = _listing(saved)
    ck = Checkpointer(saved, keep=5, async_save=False, read_only=True)
    assert int(ck.restore_latest(_abstract(_state(0))).step) == 1
    ck.close()
    assert _listing(saved) == before
    ck = Checkpointer(saved, keep=5, async_save=False)
    assert int(ck.restore_latest(_abstract(_state(0))).step) == 1
    ck.close()
    assert sorted(os.listdir(saved)) == ["1", f"2.unreadable-{os.getpid()}"]
