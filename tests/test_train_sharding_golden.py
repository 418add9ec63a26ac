"""Shardings cannot drift unnoticed: the PartitionSpec of every leaf of the vit_h
train state (params, optimiser state, step, rng) on an 8-device ``data`` x ``fsdp``
x ``tensor`` = 2 x 2 x 2 mesh equals the committed golden file.

The specs come from ``jax.eval_shape`` (nothing vit_h-sized is allocated), in a
subprocess with 8 fake CPU devices (the device count is fixed before jax starts).
A difference names the leaves that changed, appeared or disappeared. After an
intended change, regenerate the file with::

    SAM_JAX_REGEN_GOLDEN=1 python -m pytest tests/test_train_sharding_golden.py
"""

import json
import os
import subprocess
import sys

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "vit_h_train_state_specs.json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def train_state_specs() -> dict[str, list]:
    """``{leaf path: spec}`` of the vit_h train state (a spec entry: None, an axis or a list)."""
    import jax

    from configs import load_config
    from train.sharding import make_mesh
    from train.train_step import Trainer

    config = load_config("vit_h")
    config.mesh.shape = dict(MESH)
    trainer = Trainer(config, make_mesh(MESH))
    leaves = jax.tree_util.tree_flatten_with_path(trainer.abstract_state)[0]
    entry = lambda a: list(a) if isinstance(a, tuple) else a
    return {jax.tree_util.keystr(path): [entry(a) for a in x.sharding.spec] for path, x in leaves}


def test_vit_h_train_state_specs_match_golden():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    specs = json.loads(out.stdout.strip().splitlines()[-1])
    if os.environ.get("SAM_JAX_REGEN_GOLDEN") == "1":
        tmp = GOLDEN + ".tmp"
        with open(tmp, "w") as f:  # one leaf per line
            f.write(
                "{\n"
                + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(specs.items()))
                + "\n}\n"
            )
        os.replace(tmp, GOLDEN)
    with open(GOLDEN) as f:
        golden = json.load(f)
    changed = sorted(k for k in golden.keys() & specs.keys() if golden[k] != specs[k])
    added, removed = sorted(specs.keys() - golden.keys()), sorted(golden.keys() - specs.keys())
    report = [f"changed {k}: {golden[k]} -> {specs[k]}" for k in changed]
    report += [f"new {k}: {specs[k]}" for k in added] + [f"gone {k}: {golden[k]}" for k in removed]
    assert not report, (
        f"{len(report)} train-state shardings differ from {GOLDEN} "
        "(SAM_JAX_REGEN_GOLDEN=1 rewrites it):\n" + "\n".join(report[:50])
    )
    # the table is meaningful: weights are split over fsdp and tensor, Adam moments follow
    flat = json.dumps(golden)
    assert '"fsdp"' in flat and '"tensor"' in flat
    qkv = [k for k in golden if k.endswith("['blocks_0']['attn']['qkv']['kernel']")]
    assert len(qkv) == 3 and len({json.dumps(golden[k]) for k in qkv}) == 1, qkv


if __name__ == "__main__":  # the subprocess: print the specs as one JSON line
    print(json.dumps(train_state_specs(), sort_keys=True))
