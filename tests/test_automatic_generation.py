"""Dataset-scale automatic generation (``sam_jax.automatic_generation``): SA-1B shards out.

One tiny SAM (random weights, thresholds off so that every image gets masks), eight
small synthetic images: six in a folder, two in an image-only tar. Units of two images.

* an uninterrupted in-process run is the reference: its shards pass through
  ``data.pipeline`` with zero bad samples, hold each input's bytes unchanged and
  the SA-1B JSON of each image;
* the CLI run SIGKILLed after its first unit and restarted writes exactly the
  reference's images, each once, with the same mask counts;
* two processes (``jax.distributed`` on 127.0.0.1) split the units disjointly and
  together cover every image.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from configs.tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
CONFIG = json.dumps(dataclasses.asdict(TINY))
N_IMAGES, PER_SHARD = 8, 2
FLAGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``(root, inputs, checkpoint)``: 6 images in a folder and 2 in an image-only tar."""
    from data.synthetic import encode_jpeg, generate_image
    from sam_jax.checkpoint import save_params
    from sam_jax.sam_model import build_sam

    root = tmp_path_factory.mktemp("gen")
    (root / "folder").mkdir()
    blobs = [encode_jpeg(generate_image(3, i, short_side=64, aspect=1.5).image) for i in range(N_IMAGES)]
    for i, b in enumerate(blobs[:6]):
        (root / "folder" / f"img{i}.jpg").write_bytes(b)
    with tarfile.open(root / "unlabeled.tar", "w") as tar:
        for i, b in enumerate(blobs[6:]):
            info = tarfile.TarInfo(f"photos/p{i}.jpg")
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
        info = tarfile.TarInfo("README.txt")  # not an image: ignored
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    save_params(build_sam(TINY, seed=2).params, root / "tiny.npz")
    return root, [str(root / "folder"), str(root / "unlabeled.tar")], root / "tiny.npz", blobs


def _writer(corpus, out, **kw):
    from sam_jax import automatic_generation as ag
    from sam_jax.sam_model import build_sam

    root, inputs, ckpt, _ = corpus
    settings = ag.settings_for("default", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    gen = ag.make_generator(build_sam(TINY, checkpoint=ckpt), settings)
    return ag.ShardWriter(
        gen, ag.list_inputs(inputs), out, settings, images_per_shard=PER_SHARD, embed_batch=2, **kw
    )


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    stats = _writer(corpus, out).run(progress=False)
    return out, stats


def _members(out: Path) -> dict[str, list[tuple[str, bytes]]]:
    """``{shard name: [(member name, bytes), ...]}`` of the output tars."""
    res = {}
    for p in sorted(out.glob("sa_*.tar")):
        with tarfile.open(p) as tar:
            res[p.name] = [(m.name, tar.extractfile(m).read()) for m in tar]
    return res


def _mask_counts(out: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for members in _members(out).values():
        for name, data in members:
            if name.endswith(".json"):
                doc = json.loads(data)
                i = doc["image"]["image_id"]
                assert i not in counts, f"image {i} written twice"
                counts[i] = len(doc["annotations"])
    return counts


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(corpus, out, *extra):
    root, inputs, ckpt, _ = corpus
    return [sys.executable, "-m", "sam_jax.cli", "generate-shards", *inputs, "--out", str(out)]+ [
        "--images-per-shard", str(PER_SHARD), "--embed-batch", "2", "--no-progress", *FLAGS,
        "--checkpoint", str(ckpt), "--config-json", CONFIG, *extra,
    ]  # fmt: skip


def test_shards_are_sa1b_for_the_pipeline(corpus, reference):
    from data.pipeline import Pipeline
    from data.sa1b import PAYLOAD_JSON, parse_payload

    _, _, _, blobs = corpus
    out, stats = reference
    assert stats["images"] == N_IMAGES and stats["failed"] == 0 and stats["empty"] == 0
    assert stats["masks"] >= N_IMAGES  # every image has masks (empty == 0)
    members = _members(out)
    assert sorted(members) == [f"sa_{k:06d}.tar" for k in range(N_IMAGES // PER_SHARD)]
    for k, (_, ms) in enumerate(sorted(members.items())):
        ids = [k * PER_SHARD + j for j in range(PER_SHARD)]
        assert [n for n, _ in ms] == [f"sa_{i}.{e}" for i in ids for e in ("jpg", "json")]
        for (_, jpg), (_, js), i in zip(ms[::2], ms[1::2], ids):
            assert jpg == blobs[i]  # the image as given
            ann = parse_payload(js, PAYLOAD_JSON)
            doc = json.loads(js)
            assert doc["image"] == {"image_id": i, "width": 96, "height": 64, "file_name": f"sa_{i}.jpg"}
            assert len(ann.counts) == len(doc["annotations"]) > 0
            assert set(doc["annotations"][0]) >= {"segmentation", "bbox", "area", "predicted_iou", "crop_box"}
    manifests = sorted(out.glob("manifest/*.json"))
    assert len(manifests) == 4
    assert not (out / ".work").exists() or not any((out / ".work").iterdir())
    sources = [r["source"] for p in manifests for r in json.loads(p.read_text())["images"]]
    assert sources[6:] == [f"{corpus[1][1]}:photos/p0.jpg", f"{corpus[1][1]}:photos/p1.jpg"]
    run_stats = list(out.glob("stats/run_*_p00000.json"))
    assert len(run_stats) == 1 and json.loads(run_stats[0].read_text())["masks"] == stats["masks"]

    pipe = Pipeline(
        str(out / "sa_*.tar"), batch_size=2, num_epochs=1, shuffle=False, model_size=64, max_masks=8,
        process_index=0, process_count=1, max_area_frac=1.0,
    )  # fmt: skip
    seen = [int(i) for b in pipe for i, s in zip(b["image_id"], b["status"]) if s >= 0]
    st = pipe.stats()
    assert st["ok"] == N_IMAGES and sum(st.values()) == N_IMAGES  # zero bad samples
    assert sorted(seen) == list(range(N_IMAGES))

    # A second run over the same folder has nothing left to do; other settings are refused.
    again = _writer(corpus, out).run(progress=False)
    assert again["images"] == 0 and again["units_done_now"] == 0
    from sam_jax import automatic_generation as ag

    w = _writer(corpus, out)
    w.settings = ag.settings_for("sa1b")
    with pytest.raises(ValueError, match="other settings"):
        w.run(progress=False)


# Runs the CLI with one change: the process SIGKILLs itself right after the first image
# JSON of unit 1 is on disk (unit 0 finished, unit 1 half done), so the kill lands at the
# same point on any machine instead of racing a poll loop.
_KILL_IN_UNIT_1 = """
import os, runpy, signal, sys
import sam_jax.automatic_generation as ag
_write = ag.write_json
def write_json(path, *a, **k):
    _write(path, *a, **k)
    if path.parent.name == "sa_000001":
        os.kill(os.getpid(), signal.SIGKILL)
ag.write_json = write_json
sys.argv = ["sam_jax.cli", *sys.argv[1:]]
runpy.run_module("sam_jax.cli", run_name="__main__")
"""


def test_sigkill_and_restart_write_each_image_once(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", _KILL_IN_UNIT_1, *_cli(corpus, out)[3:]]
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(list(out.glob(".work/sa_000001/sa_*.json"))) == 1  # unit 1 half done
    done = sorted(p.name for p in out.glob("manifest/*.json"))
    assert 1 <= len(done) < N_IMAGES // PER_SHARD, done  # killed mid-way
    stats = _writer(corpus, out).run(progress=False)
    assert 0 < stats["images"] < N_IMAGES  # only what was missing
    ref = _mask_counts(reference[0])
    assert _mask_counts(out) == ref  # the same images, each once, the same masks
    assert _members(out).keys() == _members(reference[0]).keys()


def test_two_processes_split_disjointly(corpus, tmp_path):
    out = tmp_path / "two"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    procs = [
        subprocess.Popen(
            _cli(corpus, out, *multi, str(i)), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e.decode()[-3000:]
    per_process = [json.loads(o.decode().strip().splitlines()[-1])["images"] for o, _ in outs]
    assert per_process == [4, 4]
    owners = {}
    for p in sorted(out.glob("manifest/*.json")):
        m = json.loads(p.read_text())
        for r in m["images"]:
            assert r["id"] not in owners
            owners[r["id"]] = m["process_index"]
    # units 0 and 2 to process 0, units 1 and 3 to process 1
    assert owners == {i: (i // PER_SHARD) % 2 for i in range(N_IMAGES)}
    assert (
        len(list(out.glob("stats/run_*_p00000.json"))) == len(list(out.glob("stats/run_*_p00001.json"))) == 1
    )


def test_cli_errors_are_one_line_and_presets_count_the_work(tmp_path):
    from PIL import Image

    from benchmarks.generate_shards import gpu_figures, preset_work
    from sam_jax import automatic_generation as ag
    from sam_jax import cli

    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "one" / "a.png")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    one, o = str(tmp_path / "one"), str(tmp_path / "o")
    for argv, msg in (
        ([str(tmp_path / "nope"), "--out", o], "does not exist"),
        ([str(tmp_path / "file"), "--out", o], "neither a folder"),
        ([str(tmp_path / "empty"), "--out", o], "no images"),
        ([one, "--out", o, "--embed-batch", "0"], "--embed-batch must be >= 1"),
        ([one, "--out", str(tmp_path / "file")], "not a folder"),
    ):
        with pytest.raises(SystemExit, match=msg):
            cli.main(["generate-shards", *argv])
    assert ag.units_of_process(7, 1, 3) == [1, 4] and ag.units_of_process(2, 1, 2) == [1]
    sa1b = ag.settings_for("sa1b")
    assert (sa1b["crop_n_layers"], sa1b["min_mask_region_area"], sa1b["max_mask_fraction"]) == (2, 100, 0.95)
    # the paper's grids: 32x32 on the image, 16x16 on each of 4 crops, 8x8 on each of 16
    assert preset_work(ag.settings_for("default")) == {"crops": 1, "points": 1024, "decoder_calls_64": 16}
    assert preset_work(sa1b) == {"crops": 21, "points": 3072, "decoder_calls_64": 48}
    figs = tmp_path / "h200.jsonl"
    figs.write_text(
        '{"model": "vit_h", "part": "image_encoder", "dtype": "bf16", "batch": 8, "ms_per_image": 45.5}\n'
        '{"model": "vit_h", "part": "image_encoder", "dtype": "bf16", "batch": 1, "ms_per_image": 60}\n'
        '{"model": "vit_h", "part": "prompt+decoder", "dtype": "bf16", "prompts": 64, "ms_per_call": 15.9}\n'
    )
    assert gpu_figures(figs, "vit_h") == {"encoder_ms": 45.5, "decoder_ms_64": 15.9}
    with pytest.raises(ValueError, match="vit_b"):
        gpu_figures(figs, "vit_b")
