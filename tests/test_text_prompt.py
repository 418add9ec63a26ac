"""Text prompts in SAM: the CLIP-embedding prompt token (off by default, released
checkpoints unchanged), our checkpoints with it, ``SamPredictor.predict(text=...)`` and
``sam-jax segment --text``."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image

from benchmarks.reference_clip import official_clip
from benchmarks.reference_sam import official_sam, torch
from configs.tiny import TINY_64
from sam_jax import build_sam, cli
from sam_jax.checkpoint import CheckpointMismatchError, load_checkpoint, save_params
from sam_jax.clip.model import ClipConfig, build_clip
from sam_jax.modeling.sam import Sam
from sam_jax.modeling.variants import param_template
from sam_jax.predictor import SamPredictor
from sam_jax.sam_model import _decode

SMALL = TINY_64
TEXT = TINY_64.replace(text_embed_dim=32)
TINY_CLIP = ClipConfig(
    embed_dim=32,
    image_size=32,
    patch_size=16,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official SAM (random weights) as a .pth, and it loaded into ours with and without
    the text prompt."""
    path = tmp_path_factory.mktemp("text") / "official.pth"
    ref = official_sam(SMALL, seed=3)
    torch.save(ref.state_dict(), path)
    return ref, path, build_sam(SMALL, path)


def _prompt(n=1):
    coords = np.array([[[20.0, 30.0], [40.0, 12.0]]] * n, np.float32)
    labels = np.array([[1, 0]] * n, np.int32)
    return coords, labels


def test_official_checkpoint_loads_unchanged_with_text_off(official):
    ref, path, ours = official
    assert "text_proj" not in ours.params["prompt_encoder"]
    # A model with the text token refuses the released weights by name (nothing silently random).
    with pytest.raises(CheckpointMismatchError, match="prompt_encoder.text_proj"):
        load_checkpoint(path, param_template(Sam(TEXT)))
    image = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    coords, labels = _prompt()
    emb = ours.embed_images(image)
    low, iou = ours.decode(emb, coords, labels, multimask_output=True)
    with torch.no_grad():
        t_emb = ref.image_encoder(torch.from_numpy(image).permute(0, 3, 1, 2))
        sparse, dense = ref.prompt_encoder((torch.from_numpy(coords), torch.from_numpy(labels)), None, None)
        t_low, t_iou = ref.mask_decoder(t_emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, True)
    np.testing.assert_allclose(np.asarray(low), t_low.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(iou), t_iou.numpy(), atol=2e-5)

    # The same weights plus a text projection: a text token marked absent changes nothing;
    # a present one does, and only its direction counts (l2-normalised in the encoder).
    rng = np.random.default_rng(1)
    text_params = {
        "kernel": rng.normal(size=(32, 32)).astype(np.float32) / 6,
        "bias": rng.normal(size=(32,)).astype(np.float32),
    }
    params = dict(ours.params)
    params["prompt_encoder"] = dict(params["prompt_encoder"], text_proj=text_params)
    text = rng.normal(size=(1, 32)).astype(np.float32)
    texts = np.concatenate([text, text, 3.0 * text])
    decode = jax.jit(lambda p, *a: Sam(TEXT).apply({"params": p}, *a, method=Sam.decode), static_argnums=(6,))
    out, _ = decode(
        params,
        emb,
        np.repeat(coords, 3, 0),
        np.repeat(labels, 3, 0),
        None,
        None,
        True,
        None,
        None,
        texts,
        np.array([False, True, True]),
    )
    out = np.asarray(out)
    np.testing.assert_allclose(out[0], np.asarray(low)[0], atol=1e-5)
    assert np.abs(out[1] - out[0]).max() > 1e-3
    np.testing.assert_allclose(out[2], out[1], atol=1e-5)


def test_our_checkpoint_with_text_saves_and_loads(tmp_path):
    sam = build_sam(TEXT, seed=4)
    assert sam.params["prompt_encoder"]["text_proj"]["kernel"].shape == (32, 32)
    save_params(sam.params, tmp_path / "text.npz")
    again = load_checkpoint(tmp_path / "text.npz", param_template(Sam(TEXT)))
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(sam.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointMismatchError, match="text_proj"):
        load_checkpoint(tmp_path / "text.npz", param_template(Sam(SMALL)))


@pytest.fixture(scope="module")
def predictor():
    sam = build_sam(TEXT, seed=5)
    clip = build_clip(TINY_CLIP, seed=0)
    p = SamPredictor(sam, clip=clip)
    image = np.random.default_rng(2).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    p.set_image(image)
    return p


def test_predict_with_text_alone_and_with_points(predictor):
    masks, iou, low = predictor.predict(text="a dog", multimask_output=True)
    assert masks.shape == (3, 48, 60) and iou.shape == (3,) and low.shape == (3, 16, 16)
    # The prompt is CLIP's (normalised) text embedding of the phrase.
    emb = np.asarray(predictor.clip.embed_text(["a dog"]))
    np.testing.assert_allclose(np.linalg.norm(emb), 1.0, rtol=1e-5)
    ref_low, _ = _decode(  # the tokens of training's text pass: "no point" padding + text
        predictor.model.module,
        predictor.model.params,
        predictor.features,
        np.zeros((1, 0, 2), np.float32),
        np.zeros((1, 0), np.int32),
        None,
        None,
        None,
        None,
        True,
        emb,
    )
    np.testing.assert_allclose(low, np.asarray(ref_low[0]), atol=1e-6)
    cat = predictor.predict(text="a cat", multimask_output=True)[2]
    assert np.abs(cat - low).max() > 1e-4  # a different phrase, a different prompt
    both = predictor.predict(np.array([[10.0, 20.0]]), np.array([1]), text="a dog")
    assert both[0].shape == (3, 48, 60)
    assert np.abs(both[2] - low).max() > 1e-4


def test_text_prompt_errors(predictor):
    with pytest.raises(ValueError, match="need a CLIP model"):
        SamPredictor(predictor.model).text_embedding("a dog")
    with pytest.raises(ValueError, match="non-empty"):
        predictor.predict(text="  ")
    with pytest.raises(ValueError, match="text_embed_dim is 0"):
        SamPredictor(
            dataclasses.replace(predictor.model, module=Sam(SMALL)), clip=predictor.clip
        ).text_embedding("a dog")


def test_cli_segment_text(tmp_path, capsys):
    clip_path = tmp_path / "clip.pt"
    ref_clip = official_clip(
        embed_dim=32,
        image_size=32,
        vision_width=64,
        vision_layers=1,
        text_width=64,
        text_heads=1,
        text_layers=1,
    )
    torch.save(ref_clip.state_dict(), clip_path)
    save_params(build_sam(TEXT, seed=6).params, tmp_path / "sam.npz")
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "img.png")
    config = json.dumps(dataclasses.asdict(SMALL))
    args = [
        "segment",
        str(tmp_path / "img.png"),
        "--out",
        str(tmp_path / "out"),
        "--checkpoint",
        str(tmp_path / "sam.npz"),
        "--config-json",
        config,
    ]
    cli.main(args + ["--text", "a grey square", "--clip-checkpoint", str(clip_path), "--point", "10,10"])
    assert np.asarray(Image.open(tmp_path / "out" / "img_mask2.png")).shape == (40, 50)
    with pytest.raises(SystemExit, match="--clip-checkpoint"):
        cli.main(args + ["--text", "a dog"])
    with pytest.raises(SystemExit, match="--text"):
        cli.main(args)
