"""Checkpoints read in place: memory-mapped ``.pth`` / ``.npz`` members, the compressed
fallback, zip records pointing outside the file, aligned ``.npz`` members, one copy per
transposed kernel, and a build that never runs the initialisers."""

from __future__ import annotations

import io
import struct
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from benchmarks.reference_sam import official_sam, torch
from configs.tiny import TINY
from sam_jax import build_sam, sam_model
from sam_jax.checkpoint import (
    _READ_ONLY_MAPS,
    CorruptCheckpointError,
    _Arena,
    _contiguous,
    _mapping_of,
    load_params,
    read_pth,
    save_params,
    state_dict_to_params,
)
from sam_jax.modeling.sam import Sam
from sam_jax.modeling.variants import param_template


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A torch-saved tiny SAM, its tensors, the template and the converted params."""
    sam = official_sam(TINY, seed=7)
    path = tmp_path_factory.mktemp("mmap") / "tiny.pth"
    torch.save(sam.state_dict(), path)
    want = {k: v.detach().numpy().copy() for k, v in sam.state_dict().items()}
    template = param_template(Sam(TINY))
    return path, want, template, state_dict_to_params(read_pth(path), template)


def _recompress(src, dst, method=zipfile.ZIP_DEFLATED):
    """The same archive with every member compressed (torch never writes these)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", method) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_pth_tensors_are_read_only_views_of_the_mapped_file(tiny):
    path, want, _, _ = tiny
    got = read_pth(path)
    assert list(got) == list(want)
    for key, value in got.items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)
        if value.ndim:  # 0-d tensors are copied out of their storage
            assert _mapping_of(value) is not None, key
            assert not value.flags.writeable, key


def test_compressed_members_still_read(tiny, tmp_path):
    path, want, _, _ = tiny
    _recompress(path, tmp_path / "deflated.pth")
    got = read_pth(tmp_path / "deflated.pth")
    assert list(got) == list(want)
    for key, value in got.items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)
        assert _mapping_of(value) is None, key  # inflated, not mapped
    # Damage inside a compressed member: zipfile's CRC check still reports it.
    data = bytearray((tmp_path / "deflated.pth").read_bytes())
    info = max(zipfile.ZipFile(tmp_path / "deflated.pth").infolist(), key=lambda i: i.compress_size)
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="bad.pth is corrupt"):
        read_pth(tmp_path / "bad.pth")


@pytest.mark.parametrize(
    "field,value,match",
    [
        (0, b"XX\x03\x04", "bad local header"),
        (28, struct.pack("<H", 0xFFFF), "runs past the end of the file"),
    ],
)
def test_member_records_pointing_outside_the_file_are_refused(tiny, tmp_path, field, value, match):
    """A stored member's local header is parsed before its bytes are mapped."""
    path, *_ = tiny
    data = bytearray(path.read_bytes())
    storages = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename]
    last = max(storages, key=lambda i: i.header_offset)  # the tensor bytes nearest the end
    data[last.header_offset + field : last.header_offset + field + len(value)] = value
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=f"bad.pth is corrupt: BadZipFile: .*{match}"):
        read_pth(tmp_path / "bad.pth")


def test_kernels_are_copied_once_in_flax_layout_and_the_rest_stays_mapped(tiny):
    path, want, template, params = tiny
    enc = params["image_encoder"]
    qkv = enc["blocks_0"]["attn"]["qkv"]
    np.testing.assert_array_equal(qkv["kernel"], want["image_encoder.blocks.0.attn.qkv.weight"].T)
    assert qkv["kernel"].flags.c_contiguous and qkv["kernel"].ctypes.data % 64 == 0
    assert _mapping_of(qkv["kernel"]) not in _READ_ONLY_MAPS  # the one transposed copy
    assert _mapping_of(qkv["bias"]) is not None  # in place
    for leaf in jax.tree.leaves(params):
        assert leaf.flags.c_contiguous
    # The source pages were dropped after copying; reading them again gives the same bytes.
    again = read_pth(path)
    state_dict_to_params(again, template)
    for key, value in again.items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)
    # A cast to the template's dtype happens in the same single copy.
    bf16 = state_dict_to_params(read_pth(path), param_template(Sam(TINY, param_dtype=jax.numpy.bfloat16)))
    assert bf16["image_encoder"]["blocks_0"]["attn"]["qkv"]["bias"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        bf16["image_encoder"]["blocks_0"]["attn"]["qkv"]["kernel"],
        want["image_encoder.blocks.0.attn.qkv.weight"].T.astype(ml_dtypes.bfloat16),
    )


def test_arena_hands_out_aligned_disjoint_slices_then_falls_back():
    arena = _Arena(1000)
    a = arena.empty((10, 3), np.float32)  # 120 bytes
    b = arena.empty((5,), np.float64)
    c = arena.empty((300,), np.float32)  # 1200 bytes: past the end, a fresh array
    for x in (a, b, c):
        assert x.flags.c_contiguous and x.flags.writeable and x.ctypes.data % 64 == 0
    assert _mapping_of(a) is _mapping_of(b) is not None and _mapping_of(c) is None
    assert b.ctypes.data - a.ctypes.data == 128
    a[:], b[:] = 1.0, 2.0
    assert a.sum() == 30 and b.sum() == 10


@pytest.mark.parametrize("shape", [(300, 200), (2, 129), (257, 3)])
def test_tiled_transpose_equals_numpy(shape):
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = _contiguous(a.T, np.float32)
    np.testing.assert_array_equal(out, a.T)
    assert out.flags.c_contiguous and out.ctypes.data % 64 == 0
    assert _contiguous(out, np.float32) is out  # already contiguous: no copy


def test_npz_members_are_aligned_and_mapped_in_place(tiny, tmp_path):
    _, _, template, params = tiny
    npz = tmp_path / "tiny.npz"
    save_params(params, npz)
    flat = {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    loaded = load_params(npz, template)
    for (path, want), got in zip(flat.items(), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(got, want, err_msg=str(path))
        assert _mapping_of(got) is not None and got.ctypes.data % 64 == 0, path
    # Still a standard .npz.
    with np.load(npz) as f:
        np.testing.assert_array_equal(
            f["image_encoder/neck_1/scale"], params["image_encoder"]["neck_1"]["scale"]
        )
    # Files from np.savez (unaligned) and np.savez_compressed (inflated) read the same.
    arrays = {
        "/".join(k.key for k in p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    for writer, name in ((np.savez, "plain.npz"), (np.savez_compressed, "deflated.npz")):
        writer(tmp_path / name, **arrays)
        jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path / name, template), loaded)


def test_npz_with_objects_or_short_members_is_refused(tiny, tmp_path):
    _, _, template, _ = tiny
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CorruptCheckpointError, match="objects.npz is corrupt: .*Python objects"):
        load_params(tmp_path / "objects.npz", template)
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.zeros(100, np.float32))
        z.writestr("a.npy", buf.getvalue()[:-8])  # consistent CRC, but the data is short
    with pytest.raises(CorruptCheckpointError, match="short.npz is corrupt: .*shorter than"):
        load_params(tmp_path / "short.npz", template)


def test_build_from_a_checkpoint_never_initialises(tiny, monkeypatch):
    path, want, _, _ = tiny

    def refuse(*_):
        raise AssertionError("random initialisation while loading a checkpoint")

    monkeypatch.setattr(sam_model, "init_variables", refuse)
    model = build_sam(TINY, checkpoint=path)
    leaves = jax.tree.leaves(model.params)
    assert all(isinstance(x, jax.Array) for x in leaves)
    np.testing.assert_array_equal(
        model.params["mask_decoder"]["iou_token"]["embedding"], want["mask_decoder.iou_token.weight"]
    )
    with pytest.raises(AssertionError, match="random initialisation"):
        build_sam(TINY)


def test_pages_of_other_mappings_are_not_dropped(tmp_path):
    """Only this module's read-only maps are released: a copy-on-write np.memmap keeps
    its in-memory edits after being converted."""
    np.save(tmp_path / "w.npy", np.zeros((300, 2048), np.float32))
    cow = np.load(tmp_path / "w.npy", mmap_mode="c")
    cow[:] = 7.0
    out = _contiguous(cow.T, np.float32)
    assert (out == 7.0).all() and (cow == 7.0).all()
