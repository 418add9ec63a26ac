"""The training config is checked when it is loaded: a bad value or key fails at once with
an error naming the key and the allowed range (not a ZeroDivisionError after a compiled
step, a failure inside the image encoder, a bare KeyError, or a silent no-op run)."""

import os
import subprocess
import sys

import pytest

from configs import load_config
from configs.base import ConfigError, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.mark.parametrize(
    "override,match",
    [
        ("ckpt.every=0", r"ckpt\.every must be in \[1, inf\], got 0"),
        ("train.log_every=0", r"train\.log_every must be in \[1, inf\], got 0"),
        ("data.global_batch_size=0", r"data\.global_batch_size must be in \[1, inf\], got 0"),
        ("train.num_steps=-5", r"train\.num_steps must be in \[1, inf\], got -5"),
        ("sim.box_prob=1.5", r"sim\.box_prob must be in \[0, 1\], got 1.5"),
        ("train.num_steps=2.5", r"'train\.num_steps' expects a int, got '2\.5'"),
        ("model.compute_dtype=float16", r"model\.compute_dtype must be one of bfloat16, float32"),
        (
            "mesh.shape={'data': 3, 'fsdp': 1, 'tensor': 1}",
            r"data\.global_batch_size=8 must be divisible by the data x fsdp mesh axes \(3\)",
        ),
        ("mesh.num_processes=3", r"divisible by mesh\.num_processes=3"),
        (
            "trian.num_steps=5",
            r"unknown config key 'trian\.num_steps' \(no section 'trian'; the config has ckpt",
        ),
        ("train.num_stpes=5", r"unknown config key 'train\.num_stpes'"),
        ("train.num_steps.x=5", r"'train\.num_steps' is a value, not a section"),
        ("data.train_dir=[('/a', 10), ('/b', -1)]", r"weight of '/b' must be a number > 0"),
    ],
)
def test_bad_values_and_keys_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, [override])


def test_every_shipped_config_is_valid():
    for name in ("tiny", "vit_b", "vit_l", "vit_h"):
        load_config(os.path.join(ROOT, "configs", f"{name}.py"))


def test_unknown_section_in_a_config_file():
    c = load_config(TINY)
    c.extra = {"x": 1}
    with pytest.raises(ConfigError, match="unknown config section 'extra'"):
        validate_config(c)


def test_cli_reports_one_line_before_building_anything(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--config",
            TINY,
            "--config.ckpt.every=0",
            f"--config.train.workdir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith("error: ckpt.every must be in [1, inf], got 0")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
