"""CLIP in Flax against OpenAI's ``clip`` package: checkpoint reading, embeddings, the
last-layer masked attention, real model shapes, and the BPE tokenizer."""

from __future__ import annotations

import pickle
import zipfile

import jax
import numpy as np
import pytest

from benchmarks.reference_clip import clip_tokenizer_module, official_clip, torch
from sam_jax.checkpoint import CheckpointMismatchError, UnsafeCheckpointError, torch_key
from sam_jax.clip.checkpoint import read_clip_state_dict
from sam_jax.clip.model import CLIP, CLIP_CONFIGS, config_from_state_dict, init_clip, load_clip
from sam_jax.clip.tokenizer import default_tokenizer, tokenize

TRICKY = [
    "a dog",
    "A Photo of a DOG!!",
    "café crème brûlée",
    "naïve Zoë — résumé",
    "İstanbul ß straße",
    "🐶🐱 emoji 👍🏽 and 👨‍👩‍👧",
    "  lots   of\t\twhitespace \n\n runs  ",
    "tab\there\u00a0nbsp",
    "punctuation... ?!?! (yes) [no] {maybe} 'single' \"double\" — – …",
    "it's we're they've I'm you'll he'd",
    "&amp; &lt;html&gt; &amp;amp; &#39;",
    "mojibake: Ã©tÃ©",
    "数字 123 4567 日本語のテキスト",
    "Ελληνικά Русский текст עברית العربية",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ",
    "don't stop-believing 3.14 1,000",
    "<|endoftext|> inside",
    "",
    "x" * 300,
    " ".join(["word"] * 100),
]


def reference_tokenize(texts, context_length=77):
    """``clip.tokenize(texts, truncate=True)`` of the OpenAI package, on its tokenizer."""
    tok = clip_tokenizer_module().SimpleTokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    out = np.zeros((len(texts), context_length), np.int64)
    for i, text in enumerate(texts):
        ids = [sot] + tok.encode(text) + [eot]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = eot
        out[i, : len(ids)] = ids
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The OpenAI CLIP (tiny, random), saved as a traced TorchScript archive like the release."""
    model = official_clip()
    image = torch.randn(3, 3, 64, 64)
    text = torch.from_numpy(tokenize(["a dog", "a photo of a cat on a mat", "🐶!"])).long()
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    traced = torch.jit.trace(model, (image, text), check_trace=False)
    traced.save(str(path))
    ours = load_clip(path, text_heads=2)
    return model, path, ours, image, text


def test_torchscript_archive_reads_as_state_dict(tiny):
    model, path, _, _, _ = tiny
    with zipfile.ZipFile(path) as z:
        assert any("/code/" in n for n in z.namelist())  # a real TorchScript archive
    sd = read_clip_state_dict(path)
    want = model.state_dict()
    # Tracing made the causal attn_mask a constant (constants.pkl, not read): keys as torch's.
    assert set(sd) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)


def test_params_map_one_to_one(tiny):
    model, _, ours, _, _ = tiny
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    p = ours.params
    np.testing.assert_array_equal(
        p["visual"]["transformer"]["resblocks_1"]["attn"]["in_proj_weight"],
        sd["visual.transformer.resblocks.1.attn.in_proj_weight"],
    )
    np.testing.assert_array_equal(
        p["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"],
        sd["transformer.resblocks.0.mlp.c_fc.weight"].T,
    )
    np.testing.assert_array_equal(
        p["visual"]["conv1"]["kernel"], sd["visual.conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        p["transformer"]["resblocks_1"]["ln_2"]["scale"], sd["transformer.resblocks.1.ln_2.weight"]
    )
    np.testing.assert_array_equal(p["token_embedding"]["embedding"], sd["token_embedding.weight"])


def test_image_and_text_embeddings_match_reference(tiny):
    model, _, ours, image, text = tiny
    with torch.no_grad():
        ref_img = model.encode_image(image).numpy()
        ref_txt = model.encode_text(text).numpy()
    got_img = np.asarray(ours.encode_image(image.permute(0, 2, 3, 1).numpy()))
    got_txt = np.asarray(ours.encode_text(text.numpy()))
    err_img, err_txt = np.abs(got_img - ref_img).max(), np.abs(got_txt - ref_txt).max()
    print(
        f"CLIP parity (float32): image max|diff| {err_img:.2e} (max|ref| "
        f"{np.abs(ref_img).max():.2f}), text {err_txt:.2e} (max|ref| {np.abs(ref_txt).max():.2f})"
    )
    assert err_img < 2e-5 * max(1.0, np.abs(ref_img).max())
    assert err_txt < 2e-5 * max(1.0, np.abs(ref_txt).max())
    # The text embedding is read at the end-of-text token: padding after it changes nothing.
    assert not np.allclose(got_txt[0], got_txt[1])


def test_last_layer_masked_attention_matches_reference(tiny):
    model, _, ours, image, _ = tiny
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 64, 64), bool)
    mask[0, 8:40, 16:64] = True  # a block of patches
    mask[1] = rng.random((64, 64)) < 0.6  # scattered
    # mask[2] stays empty: the class token attends only to itself
    grid, heads = 4, 2
    cover = mask.reshape(3, grid, 16, grid, 16).mean((2, 4)).reshape(3, -1) >= 0.5
    keep = np.concatenate([np.ones((3, 1), bool), cover], 1)  # (B, T)
    bias = np.zeros((3, 17, 17), np.float32)
    bias[:, 0, :] = np.where(keep, 0.0, -np.inf)  # only the class row
    last = model.visual.transformer.resblocks[-1]
    last.attn_mask = torch.from_numpy(np.repeat(bias, heads, axis=0))  # (B * heads, T, T)
    try:
        with torch.no_grad():
            ref = model.encode_image(image).numpy()
    finally:
        last.attn_mask = None
    nhwc = image.permute(0, 2, 3, 1).numpy()
    got = np.asarray(ours.encode_image(nhwc, mask))
    np.testing.assert_allclose(got, ref, atol=2e-5 * max(1.0, np.abs(ref).max()))
    unmasked = np.asarray(ours.encode_image(nhwc))
    assert np.abs(got - unmasked).max() > 1e-2  # the mask changes the embedding
    full = np.asarray(ours.encode_image(nhwc, np.ones((3, 64, 64), bool)))
    np.testing.assert_allclose(full, unmasked, atol=1e-6)


def test_plain_state_dict_loads_too(tiny, tmp_path):
    model, _, ours, _, _ = tiny
    path = tmp_path / "sd.pth"
    torch.save(model.state_dict(), path)
    again = load_clip(path, text_heads=2)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(ours.params)):
        np.testing.assert_array_equal(a, b)


def test_refuses_code_and_mismatches(tiny, tmp_path):
    _, path, _, _, _ = tiny
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("m/data.pkl", pickle.dumps(Boom(), protocol=2))
        z.writestr("m/code/__torch__/m.py", "")
    with pytest.raises(UnsafeCheckpointError, match="print"):
        read_clip_state_dict(evil)
    sd = read_clip_state_dict(path)
    del sd["visual.ln_post.bias"]
    cut = tmp_path / "cut.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, cut)
    with pytest.raises(CheckpointMismatchError, match="ln_post.bias"):
        load_clip(cut, text_heads=2)


@pytest.mark.parametrize("name", ["ViT-B/16", "ViT-L/14@336px"])
def test_released_shapes(name):
    """The OpenAI model of each released config (built on torch's meta device, no memory)
    has exactly our parameter set and shapes, and its config is inferred from them."""
    cfg = CLIP_CONFIGS[name]
    with torch.device("meta"):
        ref = clip_model_module_clip()(
            cfg.embed_dim,
            cfg.image_size,
            cfg.vision_layers,
            cfg.vision_width,
            cfg.patch_size,
            cfg.context_length,
            cfg.vocab_size,
            cfg.text_width,
            cfg.text_heads,
            cfg.text_layers,
        )
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert config_from_state_dict(shapes) == cfg
    template = jax.eval_shape(lambda r: init_clip(CLIP(cfg), r), jax.random.key(0))["params"]
    flat = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: x, template))[0]
    ours = {}
    for path, leaf in flat:
        keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
        key = (
            torch_key(tuple(k for k in keys if k != "value"))
            .replace(".ln.1.", ".ln_1.")
            .replace(".ln.2.", ".ln_2.")
        )
        shape = tuple(leaf.shape)
        if keys[-1] == "kernel" or (keys[-2:] == ("kernel", "value")):
            shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
        ours[key] = shape
    assert ours == shapes


def clip_model_module_clip():
    from benchmarks.reference_clip import clip_model_module

    return clip_model_module().CLIP


def test_tokenizer_matches_reference_on_tricky_strings():
    ours = tokenize(TRICKY)
    ref = reference_tokenize(TRICKY)
    assert ours.shape == (len(TRICKY), 77) and ours.dtype == np.int32
    mismatches = int((ours != ref).sum())
    print(f"tokenizer: {mismatches} mismatched ids over {len(TRICKY)} strings")
    assert mismatches == 0
    tok = default_tokenizer()
    # Truncation keeps 77 ids ending with <|endoftext|>; short rows are zero-padded.
    long_row = ours[TRICKY.index(" ".join(["word"] * 100))]
    assert long_row[0] == tok.sot_token and long_row[-1] == tok.eot_token
    assert (
        list(ours[0, :4]) == [tok.sot_token, tok.encoder["a</w>"], tok.encoder["dog</w>"], tok.eot_token]
        and not ours[0, 4:].any()
    )
    assert tok.vocab_size == 49408
    assert tok.decode(tok.encode("Naïve  Zoë 🐶")) == "naïve zoë 🐶"
    with pytest.raises(TypeError, match="strings"):
        tokenize(["ok", 3])
