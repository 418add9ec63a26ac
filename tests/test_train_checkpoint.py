"""Checkpoints: SIGKILL + resume replays exactly, SIGTERM saves and exits cleanly, a
half-written step directory does not break the restore of the previous one.

Each run is ``python -m train`` in a subprocess (tiny config, 3 passes, in-memory
synthetic data, a checkpoint every step, metrics of every step in
``<workdir>/metrics.jsonl``). A persistent XLA compilation cache is shared by the
runs so that only the first one compiles.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.sim.num_passes=3", "--config.sim.num_correction_points=1",
             "--config.sim.unroll=1", "--config.data.masks_per_image=4",
             "--config.data.global_batch_size=4", "--config.data.synthetic=True",
             "--config.ckpt.every=1", "--config.ckpt.keep=10", "--config.train.log_every=1"]


def _cmd(workdir, steps):
    return [sys.executable, "-m", "train", "--config", "configs/tiny.py", *OVERRIDES,
            f"--config.train.workdir={workdir}", f"--config.train.num_steps={steps}"]


def _env():
    # single-threaded Eigen: bitwise identical runs even when the CPUs are contended
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")
    env.setdefault("JAX_COMPILATION_CACHE_DIR",
                   os.path.join(tempfile.gettempdir(), "sam_jax_test_xla_cache"))
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
    p = subprocess.Popen(_cmd(workdir, steps), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
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
    r = subprocess.run(_cmd(wd, 6), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=900)
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
    r = subprocess.run(_cmd(wd, 6), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f'"start_step": {last}' in r.stdout, r.stdout[-2000:]
    assert f"step {last + 1} in" in r.stderr     # the broken step was skipped (and moved aside)
    got = _losses(wd)
    assert max(got) == 6
    for step in range(1, 7):
        assert abs(got[step] - reference[step]) <= 1e-6, (step, got[step], reference[step])
    assert max(_steps(wd)) == 6


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
