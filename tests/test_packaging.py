"""The wheel ships only the ``sam_jax`` package (no top-level ``data``/``train``/``configs``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_sam_jax(tmp_path):
    # Build from a copy of the tree, so that the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sam_jax", "data", "train", "configs", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sam_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sam_jax", "sam_jax-0.1.0.dist-info"}, sorted(top)
    assert "sam_jax/modeling/sam.py" in names and "sam_jax/cli.py" in names
    entry_points = zipfile.ZipFile(wheel).read("sam_jax-0.1.0.dist-info/entry_points.txt").decode()
    assert "sam-jax = sam_jax.cli:main" in entry_points
