"""A 2-cell sweep end to end: run, kill it while the first cell trains, run again (the
killed cell resumes from its checkpoint, nothing is redone), report; the table holds the
cells' own numbers. Plus the grid helpers and the cluster commands (no training)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from train import sweep as sw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
# a 64 px SAM with one windowed and one global block (the sweep pins its architecture)
ARCH = dict(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=64,
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=2,
    decoder_heads=4,
    decoder_mlp_dim=64,
)
SWEEP = textwrap.dedent(f"""
    from train.sweep import Sweep, product

    def get_sweep():
        return Sweep(
            base="configs/tiny.py",
            overrides={{"model.overrides": {ARCH!r}, "data.synthetic": True,
                        "data.synthetic_images": 24, "data.global_batch_size": 2,
                        "data.masks_per_image": 2, "sim.num_passes": 2,
                        "sim.num_correction_points": 1, "sim.unroll": 2,
                        "train.num_steps": {STEPS}, "train.log_every": 4, "ckpt.every": 4,
                        "ckpt.keep": 2}},
            cells=product(fraction=("data.fraction", [0.5, 1.0])),
            eval=dict(images=2))  # the default scorer: the point protocol
""")


def _text(path) -> str:
    with open(path) as f:
        return f.read()


def _json(path):
    return json.loads(_text(path))


def test_product_and_names():
    cells = sw.product(
        size={"vit_b": {"model.variant": "vit_b"}, "vit_h": {"model.variant": "vit_h"}},
        fraction=("data.fraction", [0.1, 1.0]),
    )
    assert [c.name for c in cells] == [
        "size-vit_b_fraction-0.1",
        "size-vit_b_fraction-1.0",
        "size-vit_h_fraction-0.1",
        "size-vit_h_fraction-1.0",
    ]
    assert cells[3].overrides == {"model.variant": "vit_h", "data.fraction": 1.0}
    seeded = sw.Sweep(base="configs/tiny.py", cells=cells[:1], seeds=(0, 1)).expanded()
    assert [c.axes["seed"] for c in seeded] == [0, 1]
    assert seeded[1].overrides["train.seed"] == seeded[1].overrides["data.seed"] == 1


def test_paper_sweep_resolves_and_prints_cluster_commands(tmp_path, capsys):
    sweep = sw.load_sweep("paper_fig13")
    cells = sweep.expanded()
    names = [c.name for c in cells]
    assert len(names) == len(set(names))
    by_axis = {a: {str(c.axes[a]) for c in cells} for a in cells[0].axes}
    assert by_axis["size"] == {"vit_b", "vit_l", "vit_h"}
    assert len(by_axis["stages"]) == 5 and len(by_axis["images"]) == 3
    cfg = sw.resolve(sweep, cells[0], str(tmp_path))
    assert cfg.train.workdir == os.path.join(str(tmp_path), cells[0].name)
    assert sw.main(["run", "paper_fig13", "--workdir", str(tmp_path), "--print-commands"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("python -m train ")]
    assert len(lines) == len(cells)
    assert all('"--config.mesh.process_id=$PROCESS_ID"' in ln for ln in lines)
    # a printed command reads back as the cell's config (the shell expands the mesh flags)
    import shlex

    from configs import load_config

    i = names.index("stages-+auto_oversampled_images-11M_size-vit_h")
    line = lines[i].replace("$COORDINATOR", "10.0.0.1:1234").replace("$NUM_PROCESSES", "4")
    args = shlex.split(line.replace("$PROCESS_ID", "2"))
    got = load_config(os.path.join(REPO, args[4]), [a[len("--config.") :] for a in args[5:]])
    want = sw.resolve(sweep, cells[i], str(tmp_path))
    assert got.data.train_dir == want.data.train_dir and len(got.data.train_dir) == 3
    assert got.data.train_dir[0][1] == 10 * 120_000 and got.model.variant == "vit_h"
    assert (got.mesh.coordinator_address, got.mesh.num_processes, got.mesh.process_id) == (
        "10.0.0.1:1234",
        4,
        2,
    )
    size_b = sw.resolve(sweep, cells[names.index("stages-auto_only_images-11M_size-vit_b")], "/w")
    assert (size_b.model.variant, size_b.optim.layer_decay, size_b.train.num_steps) == ("vit_b", 0.6, 180000)
    small = sw.resolve(sweep, cells[names.index("stages-auto_only_images-0.1M_size-vit_h")], "/w")
    assert small.data.fraction * 11e6 == pytest.approx(1e5)
    saved = _json(tmp_path / cells[0].name / "config.json")
    assert saved["config"]["train"]["workdir"] == cfg.train.workdir


def _wait_for_checkpoint(proc, cell_dir: str, timeout: float = 600.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        step = sw.latest_checkpoint(cell_dir)
        if step >= 2:
            return step
        assert proc.poll() is None, "the sweep ended before its first checkpoint"
        time.sleep(0.05)
    raise TimeoutError("no checkpoint")


def test_sweep_run_kill_resume_report(tmp_path):
    sweep_file = tmp_path / "two_cells.py"
    sweep_file.write_text(SWEEP)
    work = tmp_path / "work"
    first, second = (os.path.join(work, n) for n in ("fraction-0.5", "fraction-1.0"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.sweep", "run", str(sweep_file), "--workdir", str(work)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        killed_at = _wait_for_checkpoint(proc, first)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training subprocess
        proc.wait()
    assert killed_at < STEPS
    assert not os.path.exists(os.path.join(first, "done.json"))
    assert not os.path.exists(os.path.join(second, "checkpoints"))

    assert sw.main(["run", str(sweep_file), "--workdir", str(work)]) == 0
    seg1 = _json(os.path.join(first, "timing.json"))["segments"]
    assert len(seg1) == 1 and 4 <= seg1[0]["start_step"] < STEPS and seg1[0]["end_step"] == STEPS
    seg2 = _json(os.path.join(second, "timing.json"))["segments"]
    assert [(s["start_step"], s["end_step"]) for s in seg2] == [(0, STEPS)]
    assert f'"start_step": {seg1[0]["start_step"]}' in _text(os.path.join(first, "train.log"))
    # the first cell's metrics hold steps from before the kill and after the resume
    logged = [json.loads(ln)["step"] for ln in _text(os.path.join(first, "metrics.jsonl")).splitlines()]
    assert logged[0] == 4 and logged[-1] == STEPS and set(logged) == set(range(4, STEPS + 1, 4))

    # a third run finds every cell done and trains nothing
    assert sw.main(["run", str(sweep_file), "--workdir", str(work)]) == 0
    assert len(_json(os.path.join(first, "timing.json"))["segments"]) == 1

    assert sw.main(["report", str(work)]) == 0
    rows = list(csv.DictReader(_text(work / "results.csv").splitlines()))
    assert [r["fraction"] for r in rows] == ["0.5", "1.0"]
    for row, cell_dir in zip(rows, (first, second)):
        scores = _json(os.path.join(cell_dir, "scores.json"))
        assert scores["scorer"] == "points" and scores["metrics"]["num_masks"] > 0
        for key in ("miou_1", "miou_3", "miou_5", "miou_oracle"):
            miou = scores["metrics"][key]
            assert 0.0 <= miou <= 1.0
            assert float(row[key]) == pytest.approx(miou, rel=1e-9)
        # the protocol's own record of the cell (sam_jax.evaluation) holds the same numbers
        doc = _json(os.path.join(cell_dir, "eval_points", "results.json"))
        assert doc["metrics"]["miou"]["3"] == pytest.approx(float(row["miou_3"]), rel=1e-9)
        assert int(row["steps"]) == STEPS and int(row["images_seen"]) == STEPS * 2
        timing = _json(os.path.join(cell_dir, "timing.json"))["segments"]
        assert float(row["train_wall_s"]) == pytest.approx(sum(s["wall_s"] for s in timing))
        assert float(row["train_cpu_s"]) > 0
        assert row["seeds"] == "1"
    md = _text(work / "results.md")
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == 3  # header + 2 rows
    assert f"{float(rows[0]['miou_1']):.4f}" in md
    from PIL import Image

    png = np.asarray(Image.open(work / "figure13.png"))
    assert png.ndim == 3 and png.shape[0] > 100 and png.std() > 0


def test_report_merges_seeds_into_mean_and_error_bar(tmp_path):
    width = ("model.overrides.encoder_embed_dim", [16, 32])
    sweep = sw.Sweep(base="configs/tiny.py", cells=sw.product(width=width), seeds=(0, 1, 2))
    sw.write_sweep_json(sweep, str(tmp_path))
    values = {}
    for i, cell in enumerate(sweep.expanded()):
        d = tmp_path / cell.name
        d.mkdir()
        sw.write_json(str(d / "config.json"), {"axes": cell.axes})
        miou = 0.1 * cell.axes["width"] / 16 + 0.01 * cell.axes["seed"]
        values.setdefault(cell.axes["width"], []).append(miou)
        sw.write_json(
            str(d / "done.json"),
            {
                "cell": cell.name,
                "index": i,
                "axes": cell.axes,
                "scorer": "single_point",
                "metrics": {"miou_1pt": miou, "num_masks": 5, "step": 10},
                "steps": 10,
                "images_seen": 40,
                "train_wall_s": 1.0 + i,
                "train_cpu_s": 2.0,
                "eval_wall_s": 0.5,
                "eval_cpu_s": 0.5,
            },
        )
    (tmp_path / "unfinished").mkdir()
    sw.write_json(str(tmp_path / "unfinished" / "config.json"), {"axes": {"width": 64}})
    paths = sw.write_report(str(tmp_path))
    rows = list(csv.DictReader(_text(paths["csv"]).splitlines()))
    assert [r["width"] for r in rows] == ["16", "32"] and [r["seeds"] for r in rows] == ["3", "3"]
    for r in rows:
        v = values[int(r["width"])]
        assert float(r["miou_1pt"]) == pytest.approx(np.mean(v))
        assert float(r["miou_1pt_std"]) == pytest.approx(np.std(v, ddof=1))
    assert float(rows[1]["train_wall_s"]) == pytest.approx(np.mean([4.0, 5.0, 6.0]))
    assert "Unfinished: unfinished." in _text(paths["md"])
