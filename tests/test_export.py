"""Export for serving: StableHLO artifacts and the ONNX decoder.

Artifacts are written, reloaded in a fresh Python process that imports no
sam_jax model code (``sam_jax/export.py`` is loaded from its file, alone; the
ONNX model runs under onnxruntime) and compared with the live model, for the
tiny config and for vit_b shapes (decoder at 1024 input, encoder at vit_b width
and depth on a 256 input). The ONNX decoder is also compared with the official
``SamOnnxModel`` exported by ``torch.onnx.export`` from the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from benchmarks.reference_sam import official_and_ours, official_onnx_decoder, torch
from configs.tiny import TINY
from sam_jax import cli
from sam_jax import export as sam_export
from sam_jax.amg import calculate_stability_score
from sam_jax.checkpoint import save_params
from sam_jax.geometry import resized_shape
from sam_jax.modeling.sam import Sam, postprocess_masks
from sam_jax.modeling.variants import VARIANTS, init_variables
from sam_jax.sam_model import SamModel

CONFIG = json.dumps(dataclasses.asdict(TINY))

# Runs artifacts in a fresh interpreter: export.py is loaded from its path (not the
# sam_jax package), and the run fails if any sam_jax module was imported.
RUNNER = r"""
import importlib.util, json, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("standalone_export", sys.argv[1])
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
for artifact, inputs, outputs in json.loads(sys.argv[2]):
    t0 = time.perf_counter()
    if artifact.endswith(".onnx"):
        import onnxruntime as ort
        sess = ort.InferenceSession(artifact)
        load = time.perf_counter() - t0
        with np.load(inputs) as z:
            feed = {i.name: z[i.name] for i in sess.get_inputs()}
        t1 = time.perf_counter()
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    else:
        module = loader.load_exported(artifact)
        load = time.perf_counter() - t0
        with np.load(inputs) as z:
            args = [z[n] for n in module.input_names]
        t1 = time.perf_counter()
        res = {k: np.asarray(v) for k, v in module(*args).items()}
    first_call = time.perf_counter() - t1
    np.savez(outputs, **res)
    print(json.dumps({"artifact": artifact, "load_s": load, "first_call_s": first_call}))
leaked = sorted(k for k in sys.modules if k.startswith("sam_jax"))
assert not leaked, leaked
"""


def run_fresh(jobs: list[tuple]) -> dict[str, dict]:
    """Run ``(artifact, inputs.npz, outputs.npz)`` jobs in a new process; returns outputs."""
    jobs = [[str(a) for a in job] for job in jobs]
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, sam_export.__file__, json.dumps(jobs)],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for line in proc.stdout.splitlines():
        print("fresh process:", line)
    out = {}
    for artifact, _, outputs in jobs:
        with np.load(outputs) as z:
            out[artifact] = {k: z[k] for k in z.files}
    return out


def assert_close(name: str, ours, ref, rel: float = 1e-4) -> float:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: max |diff| {diff:.3g} (max |ref| {np.abs(ref).max():.3g})")
    assert diff <= rel * (1.0 + float(np.abs(ref).max())), (name, diff)
    return diff


def decoder_inputs(config, rng, batch: int = 3, n: int = 4) -> dict[str, np.ndarray]:
    """StableHLO decoder inputs: padded points (-2 slots), optional boxes and masks."""
    s, r = config.image_size, config.low_res_size
    labels = rng.integers(0, 2, (batch, n)).astype(np.int32)
    labels[0, 2:] = -2  # row 0 has two real points
    xy0 = rng.uniform(0, s / 2, (batch, 2))
    return {
        "point_coords": rng.uniform(0, s, (batch, n, 2)).astype(np.float32),
        "point_labels": labels,
        "boxes": np.concatenate([xy0, xy0 + rng.uniform(8, s / 2, (batch, 2))], 1).astype(np.float32),
        "box_valid": np.array([True, False, True])[:batch],
        "mask_input": rng.normal(size=(batch, r, r)).astype(np.float32),
        "has_mask_input": np.array([False, True, True])[:batch],
    }


def live_decoder(model: SamModel, emb, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Our decoder on the StableHLO decoder inputs: ``(B, 4, r, r)``, ``(B, 4)``."""
    outs = [
        model.decode(
            emb,
            p["point_coords"],
            p["point_labels"],
            p["boxes"],
            p["mask_input"],
            mm,
            p["box_valid"],
            p["has_mask_input"],
        )
        for mm in (False, True)
    ]
    return (
        np.concatenate([np.asarray(o[0]) for o in outs], 1),
        np.concatenate([np.asarray(o[1]) for o in outs], 1),
    )


def onnx_feed(config, emb_nhwc, coords, labels, mask=None, orig=(150, 200)):
    r = config.low_res_size
    return {
        "image_embeddings": np.ascontiguousarray(emb_nhwc.transpose(0, 3, 1, 2)),
        "point_coords": np.asarray(coords, np.float32)[None],
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": (
            np.zeros((1, 1, r, r), np.float32)
            if mask is None
            else np.asarray(mask, np.float32).reshape(1, 1, r, r)
        ),
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }


def live_onnx_outputs(model: SamModel, emb, coords, labels, mask, orig):
    """Our decoder and postprocessing on an official-interface prompt (labels 2/3 = box)."""
    coords, labels = np.asarray(coords, np.float32), np.asarray(labels)
    is_box = labels >= 2
    boxes = coords[is_box].reshape(1, 4) if is_box.any() else None
    points = ~is_box & (labels != -1)  # ours appends the padding point itself
    pc = coords[points][None] if points.any() else None
    pl = labels[points].astype(np.int32)[None] if points.any() else None
    m = None if mask is None else np.asarray(mask, np.float32).reshape(1, *mask.shape[-2:])
    low, iou = zip(*(model.decode(emb, pc, pl, boxes, m, mm) for mm in (False, True)))
    low = np.concatenate([np.asarray(x) for x in low], 1)
    iou = np.concatenate([np.asarray(x) for x in iou], 1)
    s = model.config.image_size
    up = np.asarray(postprocess_masks(low, resized_shape(*orig, s), orig, s))
    return up, iou, low


# ----------------------------------------------------------------------------- tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_tiny")
    sam, model = official_and_ours(TINY, d)
    save_params(model.params, d / "tiny.npz")
    return sam, model, d


@pytest.fixture(scope="module")
def tiny_artifacts(tiny):
    """The tiny model exported by the command line (StableHLO, weights baked, and ONNX)."""
    pytest.importorskip("onnx")
    d = tiny[2]
    cli.main(
        [
            "export",
            "--out",
            str(d / "artifacts"),
            "--format",
            "stablehlo",
            "onnx",
            "--checkpoint",
            str(d / "tiny.npz"),
            "--config-json",
            CONFIG,
        ]
    )
    return d / "artifacts"


def test_cli_export_tiny_reload_in_fresh_process(tiny, tiny_artifacts):
    pytest.importorskip("onnxruntime")
    _, model, d = tiny
    out = tiny_artifacts
    enc_meta = json.loads((out / "image_encoder.json").read_text())
    dec_meta = json.loads((out / "mask_decoder.json").read_text())
    s, g, e = TINY.image_size, TINY.embedding_size, TINY.prompt_embed_dim
    assert enc_meta["inputs"] == [{"name": "pixels", "shape": ["b", s, s, 3], "dtype": "float32"}]
    assert enc_meta["outputs"][0]["shape"] == ["b", g, g, e]
    assert enc_meta["platforms"] == ["cpu", "cuda", "tpu"] and enc_meta["weights"] == "constants"
    assert enc_meta["preprocess"]["pixel_mean"] == [123.675, 116.28, 103.53]
    assert enc_meta["image_size"] == s and enc_meta["config"]["encoder_embed_dim"] == 64
    assert [x["shape"] for x in dec_meta["inputs"][1:3]] == [["b", "n", 2], ["b", "n"]]

    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, s, s, 3)).astype(np.float32)
    emb = np.asarray(model.embed_images(pixels))
    dec_in = dict(image_embeddings=emb[:1], **decoder_inputs(TINY, rng))
    coords = np.concatenate([rng.uniform(0, s, (2, 2)), np.zeros((1, 2))]).astype(np.float32)
    labels = np.array([1, 0, -1], np.float32)
    feed = onnx_feed(TINY, emb[1:], coords, labels)
    np.savez(d / "enc_in.npz", pixels=pixels)
    np.savez(d / "dec_in.npz", **dec_in)
    np.savez(d / "onnx_in.npz", **feed)
    res = run_fresh(
        [
            (out / "image_encoder.stablehlo", d / "enc_in.npz", d / "enc_out.npz"),
            (out / "mask_decoder.stablehlo", d / "dec_in.npz", d / "dec_out.npz"),
            (out / "sam_decoder.onnx", d / "onnx_in.npz", d / "onnx_out.npz"),
        ]
    )
    enc_out, dec_out, onnx_out = res.values()
    assert_close("tiny encoder: stablehlo vs live", enc_out["image_embeddings"], emb)
    low, iou = live_decoder(model, emb[:1], dec_in)
    assert_close("tiny decoder: stablehlo vs live (low-res)", dec_out["low_res_masks"], low)
    assert_close("tiny decoder: stablehlo vs live (iou)", dec_out["iou_predictions"], iou)
    up, iou, low = live_onnx_outputs(model, emb[1:], coords, labels, None, (150, 200))
    assert_close("tiny onnx vs live (masks)", onnx_out["masks"], up)
    assert_close("tiny onnx vs live (iou)", onnx_out["iou_predictions"], iou)
    assert_close("tiny onnx vs live (low-res)", onnx_out["low_res_masks"], low)


# ----------------------------------------------------------------------------- vit_b shapes


def random_params(shapes, seed: int = 0):
    """Random float32 parameters of the given shapes, scaled to keep activations O(1)."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        if x.ndim == 1:
            return 1.0 + 0.1 * noise if name.endswith("['scale']") else 0.05 * noise
        if "rel_pos" in name or "pos_embed" in name:
            return 0.1 * noise
        if name.endswith(("['embedding']", "gaussian_matrix']")):
            return noise
        return noise / np.float32(np.sqrt(np.prod(x.shape[:-1])))

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def vit_b():
    """vit_b at 1024 (decoder) and vit_b width/depth on a 256 input (encoder)."""
    small = VARIANTS["vit_b"].replace(image_size=256)
    shapes = jax.eval_shape(functools.partial(init_variables, Sam(small)), jax.random.key(0))
    params = random_params(nn.unbox(shapes["params"]))
    encoder = SamModel(Sam(small), {"image_encoder": params["image_encoder"]}, "vit_b")
    decoder = SamModel(
        Sam(VARIANTS["vit_b"]), {k: params[k] for k in ("prompt_encoder", "mask_decoder")}, "vit_b"
    )
    return encoder, decoder


def test_vit_b_shapes_reload_in_fresh_process(vit_b, tmp_path):
    pytest.importorskip("onnxruntime")
    encoder, decoder = vit_b
    enc_path = sam_export.export_part(encoder, "image_encoder", tmp_path, weights="constants")
    dec_path = sam_export.export_part(decoder, "mask_decoder", tmp_path, weights="inputs")
    onnx_path = sam_export.export_onnx(decoder, tmp_path / "decoder.onnx")
    dec_meta = json.loads(dec_path.with_suffix(".json").read_text())
    assert dec_meta["inputs"][0]["shape"] == [1, 64, 64, 256]
    assert dec_meta["outputs"][0]["shape"] == ["b", 4, 256, 256]
    assert (tmp_path / dec_meta["weights_file"]).is_file()
    assert dec_path.stat().st_size < 1 << 20  # the weights are not baked in

    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(1, 256, 256, 3)).astype(np.float32)
    emb_small = np.asarray(encoder.embed_images(pixels))
    emb = rng.normal(size=(1, 64, 64, 256)).astype(np.float32)
    dec_in = dict(image_embeddings=emb, **decoder_inputs(decoder.config, rng, batch=2, n=3))
    coords = np.array([[300.0, 200.0], [700.0, 650.0], [100, 120], [900, 800]], np.float32)
    labels = np.array([1, 0, 2, 3], np.float32)  # two points and a box
    mask = rng.normal(size=(256, 256)).astype(np.float32)
    feed = onnx_feed(decoder.config, emb, coords, labels, mask, orig=(480, 640))
    np.savez(tmp_path / "enc_in.npz", pixels=pixels)
    np.savez(tmp_path / "dec_in.npz", **dec_in)
    np.savez(tmp_path / "onnx_in.npz", **feed)
    res = run_fresh(
        [
            (enc_path, tmp_path / "enc_in.npz", tmp_path / "enc_out.npz"),
            (dec_path, tmp_path / "dec_in.npz", tmp_path / "dec_out.npz"),
            (onnx_path, tmp_path / "onnx_in.npz", tmp_path / "onnx_out.npz"),
        ]
    )
    enc_out, dec_out, onnx_out = res.values()
    assert_close("vit_b encoder @256: stablehlo vs live", enc_out["image_embeddings"], emb_small)
    low, iou = live_decoder(decoder, emb, dec_in)
    assert_close("vit_b decoder: stablehlo vs live (low-res)", dec_out["low_res_masks"], low)
    assert_close("vit_b decoder: stablehlo vs live (iou)", dec_out["iou_predictions"], iou)
    up, iou, low = live_onnx_outputs(decoder, emb, coords, labels, mask, (480, 640))
    assert onnx_out["masks"].shape == (1, 4, 480, 640)
    assert_close("vit_b onnx vs live (masks)", onnx_out["masks"], up)
    assert_close("vit_b onnx vs live (iou)", onnx_out["iou_predictions"], iou)
    assert_close("vit_b onnx vs live (low-res)", onnx_out["low_res_masks"], low)


# ----------------------------------------------------------------------------- ONNX options


@pytest.mark.parametrize(
    "options",
    [
        {"return_single_mask": True},
        {"use_stability_score": True, "return_extra_metrics": True},
        {"return_single_mask": True, "use_stability_score": True, "return_extra_metrics": True},
    ],
)
def test_onnx_options_match_live_decoder(tiny, options):
    ort = pytest.importorskip("onnxruntime")
    from sam_jax.onnx_export import build_onnx_model

    _, model, _ = tiny
    sess = ort.InferenceSession(build_onnx_model(model, **options).SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    extra = options.get("return_extra_metrics", False)
    assert names == (
        ["masks", "iou_predictions", "stability_scores", "areas", "low_res_masks"]
        if extra
        else ["masks", "iou_predictions", "low_res_masks"]
    )
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(1, TINY.embedding_size, TINY.embedding_size, 64)).astype(np.float32)
    cases = [  # (coords, labels, mask?, original size)
        (np.array([[40.0, 30.0], [0, 0]]), np.array([1, -1]), False, (150, 200)),
        (np.array([[40.0, 30.0], [90, 100], [10, 20], [200, 150]]), np.array([1, 0, 2, 3]), True, (256, 100)),
        (np.array([[120.0, 60.0], [30, 200], [0, 0]]), np.array([1, 1, -1]), False, (97, 97)),
    ]
    for coords, labels, with_mask, orig in cases:
        mask = rng.normal(size=(TINY.low_res_size,) * 2) if with_mask else None
        out = dict(zip(names, sess.run(None, onnx_feed(TINY, emb, coords, labels, mask, orig))))
        up, iou, low = live_onnx_outputs(model, emb, coords, labels, mask, orig)
        scores = (
            np.asarray(calculate_stability_score(low, 0.0, 1.0))
            if options.get("use_stability_score")
            else iou
        )
        if options.get("return_single_mask"):
            score = scores + (len(labels) - 2.5) * np.array([[1000.0, 0, 0, 0]])
            best = int(np.argmax(score[0]))
            assert best == (0 if len(labels) > 2 else int(np.argmax(scores[0, 1:])) + 1)
            up, scores, low = up[:, best : best + 1], scores[:, best : best + 1], low[:, best : best + 1]
        assert out["masks"].shape == (1, scores.shape[1]) + orig
        assert_close(f"onnx {options} {orig}: masks", out["masks"], up)
        assert_close(f"onnx {options} {orig}: scores", out["iou_predictions"], scores)
        assert_close(f"onnx {options} {orig}: low-res", out["low_res_masks"], low)
        if extra:
            np.testing.assert_allclose(
                out["stability_scores"], calculate_stability_score(up, 0.0, 1.0), atol=1e-6
            )
            np.testing.assert_array_equal(out["areas"], (out["masks"] > 0).sum((-2, -1)))


def test_onnx_matches_official_onnx_export(tiny):
    ort = pytest.importorskip("onnxruntime")

    from sam_jax.onnx_export import build_onnx_model

    sam, model, _ = tiny
    e, g, r = TINY.prompt_embed_dim, TINY.embedding_size, TINY.low_res_size
    orig = (150, 200)  # the official tracer bakes the crop of this size into its graph
    dummy = {
        "image_embeddings": torch.randn(1, e, g, g),
        "point_coords": torch.randint(0, 256, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, r, r),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor(orig, dtype=torch.float),
    }
    rng = np.random.default_rng(3)
    for single in (False, True):
        official = ort.InferenceSession(official_onnx_decoder(sam, dummy, return_single_mask=single))
        ours = ort.InferenceSession(build_onnx_model(model, return_single_mask=single).SerializeToString())
        for n, with_mask in ((2, False), (5, True)):
            emb = rng.normal(size=(1, g, g, e)).astype(np.float32)
            coords = rng.uniform(0, TINY.image_size, (n, 2))
            labels = np.concatenate([rng.integers(0, 2, n - 1), [-1]])
            mask = rng.normal(size=(r, r)) if with_mask else None
            feed = onnx_feed(TINY, emb, coords, labels, mask, orig)
            for name, a, b in zip(
                ["masks", "iou_predictions", "low_res_masks"], ours.run(None, feed), official.run(None, feed)
            ):
                assert_close(f"onnx vs official onnx (single={single}, n={n}): {name}", a, b)


def test_onnx_encoder_through_jax2onnx(tiny, tmp_path):
    """The optional encoder export (jax2onnx is not a declared dependency)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    _, model, _ = tiny
    sess = ort.InferenceSession(str(sam_export.export_encoder_onnx(model, tmp_path / "encoder.onnx")))
    s = TINY.image_size
    assert [(x.name, x.shape) for x in sess.get_inputs()] == [("pixels", ["b", 3, s, s])]
    pixels = np.random.default_rng(4).normal(size=(2, s, s, 3)).astype(np.float32)
    out = sess.run(None, {"pixels": pixels.transpose(0, 3, 1, 2)})[0]
    assert_close("onnx encoder (jax2onnx) vs live", out.transpose(0, 2, 3, 1), model.embed_images(pixels))


def test_export_errors(tiny, tiny_artifacts, monkeypatch):
    _, _, d = tiny
    base = ["export", "--out", str(d / "bad"), "--checkpoint", str(d / "tiny.npz"), "--config-json", CONFIG]
    with pytest.raises(SystemExit, match="platforms must be among"):
        cli.main(base + ["--platforms", "cpu,gpu"])
    monkeypatch.setattr(sam_export, "_MAX_BAKED_BYTES", 1000)
    with pytest.raises(SystemExit, match="use weights='inputs'"):
        cli.main(base + ["--parts", "mask_decoder"])
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    with pytest.raises(SystemExit, match=r"the ONNX image encoder needs jax2onnx \(pip install"):
        cli.main(base + ["--format", "onnx-encoder"])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SystemExit, match=r"needs the 'export' extra \(pip install"):
        cli.main(base + ["--format", "onnx"])
    decoder = sam_export.load_exported(tiny_artifacts / "mask_decoder.stablehlo")
    with pytest.raises(ValueError, match=r"image_embeddings must have shape \(1, 16, 16, 64\)"):
        decoder(np.zeros((1, 8, 8, 64)), *([np.zeros(1)] * 6))
    with pytest.raises(FileNotFoundError, match="are both needed"):
        sam_export.load_exported(d / "missing.stablehlo")
