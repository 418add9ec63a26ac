"""The benchmark suite runs in CI-sized form and produces every figure (values unchecked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_encoder_flops_match_the_anchor_convention():
    from benchmarks.run import encoder_flops
    from sam_jax.modeling.variants import VARIANTS

    # The anchors' analytic counts (shared/anchors/torch_sam_bench.py), GFLOP per image.
    assert round(encoder_flops(VARIANTS["vit_b"]) / 1e9, 2) == 967.17
    assert round(encoder_flops(VARIANTS["vit_h"]) / 1e9, 2) == 5945.88


def test_suite_produces_every_figure():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--tiny",
            "--iters",
            "1",
            "--batches",
            "1,2",
            "--impls",
            "auto,xla",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    ours = {
        (r["bench"], r.get("dtype"), r.get("batch"), r.get("prompts"), r.get("attention"))
        for r in lines
        if r.get("impl") == "sam-jax" and "error" not in r
    }
    for dtype in ("float32", "bfloat16"):
        for batch in (1, 2):
            for impl in ("auto", "xla"):
                assert ("image_encoder", dtype, batch, None, impl) in ours
        for prompts in (1, 64):
            assert ("prompt+decoder", dtype, None, prompts, None) in ours
        assert ("amg", dtype, None, None, None) in ours
    train = [r for r in lines if r.get("bench") == "train_step"]
    assert {r["batch"] for r in train} == {1, 2} and all(r["ok"] for r in train)
    for r in train:
        assert r["images_per_s"] > 0 and r["tflops_per_step"] > 0 and "peak_gib" in r
    for r in lines:
        if r.get("impl") == "sam-jax" and r["bench"] == "image_encoder":
            assert r["ms_per_image"] > 0 and r["tflops"] > 0
    # The official package is installed with the test extras: ratios are reported.
    ratios = {r["bench"] for r in lines if r.get("figure") == "ratio_ours_over_official"}
    assert ratios == {"image_encoder", "prompt+decoder", "amg"}
