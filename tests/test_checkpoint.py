"""Reading ``.pth`` checkpoints safely, key mapping errors, converted ``.npz`` files."""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from benchmarks.reference_sam import official_sam, torch
from configs.tiny import TINY
from sam_jax import build_sam, sam_model_registry
from sam_jax.checkpoint import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_params,
    read_pth,
    save_params,
    state_dict_to_params,
)
from sam_jax.modeling.sam import Sam
from sam_jax.modeling.variants import VARIANTS, guess_variant, param_template
from sam_jax.sam_model import convert_checkpoint


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    sam = official_sam(TINY, seed=5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(sam.state_dict(), path)
    return path, {k: v.detach().numpy() for k, v in sam.state_dict().items()}


def test_read_pth_reads_tensors_of_every_layout_and_dtype(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict(
        f32=torch.randn(3, 5),
        transposed=base.t(),
        sliced=base[1:, 2:5],
        bf16=torch.randn(4, dtype=torch.bfloat16),
        f16=torch.randn(2, 2, dtype=torch.float16),
        i64=torch.arange(7),
        flag=torch.tensor([True, False]),
        scalar=torch.tensor(3.5),
        param=torch.nn.Parameter(torch.ones(2, 3)),
    )
    path = tmp_path / "mixed.pth"
    torch.save(sd, path)
    got = read_pth(path)
    assert list(got) == list(sd)
    for key, tensor in sd.items():
        want = tensor.detach().float().numpy() if key == "bf16" else tensor.detach().numpy()
        np.testing.assert_array_equal(np.asarray(got[key], want.dtype), want, err_msg=key)
        assert got[key].shape == tuple(tensor.shape), key


def test_state_dict_maps_one_to_one(tiny_pth):
    path, sd = tiny_pth
    params = state_dict_to_params(read_pth(path), param_template(Sam(TINY)))
    enc, dec = params["image_encoder"], params["mask_decoder"]
    np.testing.assert_array_equal(
        enc["blocks_1"]["attn"]["qkv"]["kernel"], sd["image_encoder.blocks.1.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(
        enc["patch_embed"]["proj"]["kernel"],
        sd["image_encoder.patch_embed.proj.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        dec["output_upscaling_0"]["kernel"],
        sd["mask_decoder.output_upscaling.0.weight"].transpose(2, 3, 0, 1),
    )
    np.testing.assert_array_equal(enc["neck_1"]["scale"], sd["image_encoder.neck.1.weight"])
    n_ours = sum(x.size for x in jax.tree.leaves(params))
    assert n_ours == sum(v.size for v in sd.values())


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_variants_have_the_official_parameter_count(variant):
    import segment_anything

    with torch.device("meta"):
        official = segment_anything.sam_model_registry[variant]()
    want = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    template = param_template(Sam(VARIANTS[variant]))
    assert sum(int(np.prod(s)) for s in want.values()) == sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(template)
    )
    # The mapping is complete: shapes-only state dict converts without error.
    fake = {k: np.zeros(s, np.float32) for k, s in want.items()} if variant == "vit_b" else None
    if fake is not None:
        state_dict_to_params(fake, template)
        assert guess_variant(fake) == "vit_b"


def test_mismatched_checkpoints_name_the_keys(tiny_pth):
    _, sd = tiny_pth
    template = param_template(Sam(TINY))
    broken = dict(sd)
    del broken["mask_decoder.iou_token.weight"]
    broken["mask_decoder.extra_head.weight"] = np.zeros(3, np.float32)
    broken["image_encoder.pos_embed"] = np.zeros((1, 8, 8, 64), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        state_dict_to_params(broken, template)
    msg = str(err.value)
    assert "1 missing (mask_decoder.iou_token.weight)" in msg
    assert "1 unexpected (mask_decoder.extra_head.weight)" in msg
    assert "1 with wrong shapes (image_encoder.pos_embed" in msg and "(1, 8, 8, 64)" in msg


def test_mismatch_message_is_summarised(tiny_pth):
    """A checkpoint of another variant: counts and the first keys, not every key (~20 KB)."""
    _, sd = tiny_pth
    with pytest.raises(CheckpointMismatchError) as err:
        state_dict_to_params(sd, param_template(Sam(VARIANTS["vit_b"])))
    msg = str(err.value)
    assert len(msg) < 1500, len(msg)
    assert re.search(r"\d+ missing \(image_encoder\.blocks\.", msg), msg
    assert re.search(r"\d+ with wrong shapes \(.*\.\.\. \(\d+ more\)", msg), msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def _zip_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")


def test_code_executing_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    _zip_pickle(path, pickle.dumps({"w": _Evil()}))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        read_pth(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    # A torch-saved object of an arbitrary class is refused too.
    torch.save({"w": torch.ones(1), "meta": collections.Counter("ab")}, tmp_path / "obj.pth")
    with pytest.raises(UnsafeCheckpointError, match="collections.Counter"):
        read_pth(tmp_path / "obj.pth")


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_pth(tmp_path / "nope.pth")
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a zip-format"):
        read_pth(legacy)
    _zip_pickle(tmp_path / "list.pth", pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="state_dict of tensors"):
        read_pth(tmp_path / "list.pth")


class _StorageRef:
    """Pickled as the persistent id of a 4-item float32 storage (see ``_tensor_zip``)."""


class _TensorRecord:
    def __init__(self, offset, size, stride):
        self.args = (_StorageRef(), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _StorageRef) else None


def _tensor_zip(path, offset, size, stride):
    """A .pth whose one tensor record has the given offset/size/stride over 4 float32 items."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(collections.OrderedDict(w=_TensorRecord(offset, size, stride)))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize(
    "offset,size,stride,match",
    [
        (0, (1_000_000,), (-1000,), "negative size or stride"),
        (-1_000_000, (1_000_000,), (1,), "bad storage offset"),
        (2, (3,), (1,), "runs past its storage"),
        (0, (2, 3), (3, 1), "runs past its storage"),
        (4, (), (), "runs past its storage"),
    ],
)
def test_tensor_records_outside_their_storage_are_refused(tmp_path, offset, size, stride, match):
    """Crafted records that made ``as_strided`` read heap memory (segfault) on main."""
    path = tmp_path / "crafted.pth"
    _tensor_zip(path, offset, size, stride)
    with pytest.raises(CorruptCheckpointError, match=f"crafted.pth is corrupt: .*{match}"):
        read_pth(path)
    _tensor_zip(path, 1, (3,), (1,))  # the same record in bounds reads fine
    np.testing.assert_array_equal(read_pth(path)["w"], [1, 2, 3])


def _flip_byte(path, pos):
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_and_damaged_files_say_so(tiny_pth, tmp_path):
    src, _ = tiny_pth
    data = src.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="cut.pth is truncated"):
        read_pth(cut)
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(data)
    _flip_byte(flipped, len(data) // 2)  # inside a tensor's bytes: the CRC check fails
    with pytest.raises(CorruptCheckpointError, match="flipped.pth is corrupt"):
        read_pth(flipped)
    template = param_template(Sam(TINY))
    npz = tmp_path / "tiny.npz"
    save_params(state_dict_to_params(read_pth(src), template), npz)
    data = npz.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="cut.npz is truncated"):
        load_params(tmp_path / "cut.npz", template)
    _flip_byte(npz, len(data) // 2)
    with pytest.raises(CorruptCheckpointError, match="tiny.npz is corrupt"):
        load_params(npz, template)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_pth(tmp_path)


def test_convert_and_reload_npz(tiny_pth, tmp_path):
    path, sd = tiny_pth
    out = tmp_path / "tiny.npz"
    assert convert_checkpoint(path, out, variant=TINY) == "custom"
    from_npz = build_sam(TINY, checkpoint=out)
    from_pth = build_sam(TINY, checkpoint=path)
    jax.tree.map(np.testing.assert_array_equal, from_npz.params, from_pth.params)
    # A file for another model is refused with the offending names.
    other = build_sam(TINY.replace(decoder_mlp_dim=64))
    save_params(other.params, tmp_path / "other.npz")
    with pytest.raises(CheckpointMismatchError, match="lin1/kernel"):
        load_params(tmp_path / "other.npz", param_template(Sam(TINY)))


def test_registry_builds_without_torch_or_tensorflow():
    """`sam_model_registry['vit_b']()` in a process where torch/tensorflow cannot import."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'tensorflow', 'torchvision'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sam_jax import sam_model_registry\n"
        "m = sam_model_registry['vit_b']()\n"
        "import jax\n"
        "print(m.variant, sum(x.size for x in jax.tree.leaves(m.params)))\n"
        "assert not any(k.split('.')[0] in ('torch', 'tensorflow') for k in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    variant, count = out.stdout.split()
    assert variant == "vit_b" and int(count) > 90_000_000


def test_registry_names():
    assert set(sam_model_registry) == {"default", "vit_b", "vit_l", "vit_h"}
    assert sam_model_registry["default"].__name__ == "build_sam_vit_h"
    with pytest.raises(ValueError, match="unknown SAM variant 'vit_x'"):
        build_sam("vit_x")
