"""The fast per-sample transform (``data.preprocess`` on RLE runs) equals a full-resolution
reference, number for number, and the ``pipeline-cpu`` benchmark mode produces its figures.

The reference decodes every mask to a full ``(H, W)`` array with pycocotools and
follows the documented geometry directly (area filter, seeded draw of K masks,
inclusive box, uniform foreground point in column-major order, nearest-neighbour
targets at the centres of the ``R x R`` grid, PIL draft decode + bilinear resize,
normalise, zero padding).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data import rle
from data.preprocess import PreprocessConfig, process_record
from data.sa1b import PAYLOAD_JSON
from data.status import Status
from data.synthetic import encode_jpeg, generate_image, sample_json
from sam_jax.geometry import apply_boxes, apply_coords, normalize, pad_to_square, resized_shape

ROOT = os.path.join(os.path.dirname(__file__), "..")
SEED = 5


@pytest.fixture(scope="module")
def records():
    """Three (jpeg, json bytes, json dict) records: landscape and portrait, 240 px short side
    (the JPEG is decoded at 1/2 scale for a 128 px model: the draft path)."""
    out = []
    for index in range(3):
        s = generate_image(SEED, index, 240, aspect=1.5)
        js = sample_json(s, SEED)
        out.append((encode_jpeg(s.image), json.dumps(js).encode(), js))
    return out


def reference_sample(jpeg: bytes, js: dict, epoch: int, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    S, R, K = cfg.model_size, cfg.target, cfg.max_masks
    im = Image.open(io.BytesIO(jpeg))
    W, H = im.size
    nh, nw = resized_shape(H, W, S)
    im.draft("RGB", (nw, nh))
    im = im.convert("RGB")
    small = np.asarray(im.resize((nw, nh), Image.BILINEAR) if im.size != (nw, nh) else im)
    masks = mask_utils.decode([a["segmentation"] for a in js["annotations"]])  # (H, W, N)
    areas = masks.sum((0, 1))
    usable = np.flatnonzero((areas > 0) & (areas <= cfg.max_area_frac * H * W))
    image_id = js["image"]["image_id"]
    rng = np.random.default_rng([cfg.seed, epoch, image_id & 0xFFFFFFFFFFFF, 0xDA7A])
    chosen = rng.permutation(usable)[:K]
    # Target pixel centres in resized-image pixels -> nearest source pixel; padding stays 0.
    centres = (np.arange(R) + 0.5) * S / R
    rows = np.minimum(np.floor(centres[centres < nh] * H / nh).astype(int), H - 1)
    cols = np.minimum(np.floor(centres[centres < nw] * W / nw).astype(int), W - 1)
    out = {
        "image": pad_to_square(normalize(small), S),
        "masks": np.zeros((K, R, R), np.uint8),
        "mask_valid": np.zeros(K, bool),
        "boxes": np.zeros((K, 4), np.float32),
        "points": np.zeros((K, 2), np.float32),
    }
    for k, i in enumerate(chosen):
        m = masks[:, :, i]
        ys, xs = np.nonzero(m)
        out["boxes"][k] = apply_boxes([xs.min(), ys.min(), xs.max(), ys.max()], (H, W), S)[0]
        fg = np.flatnonzero(m.ravel(order="F"))  # column-major, as the RLE
        q = fg[int(rng.integers(len(fg)))]
        out["points"][k] = apply_coords([q // H, q % H], (H, W), S)
        out["masks"][k, : len(rows), : len(cols)] = m[np.ix_(rows, cols)]
        out["mask_valid"][k] = True
    out["resized_hw"] = np.array([nh, nw], np.int32)
    out["original_hw"] = np.array([H, W], np.int32)
    return out


@pytest.mark.parametrize("max_masks", [8, 64])
def test_fast_transform_equals_full_resolution_reference(records, max_masks):
    cfg = PreprocessConfig(model_size=128, target_size=32, max_masks=max_masks, seed=3)
    compared = 0
    for jpeg, payload, js in records:
        n_masks = len(js["annotations"])
        assert 20 <= n_masks <= 64  # some images have fewer masks than K = 64: padding
        for epoch in (0, 1):
            got, status = process_record(jpeg, payload, PAYLOAD_JSON, 0, epoch, cfg)
            want = reference_sample(jpeg, js, epoch, cfg)
            assert status == Status.OK
            assert got["image_id"] == js["image"]["image_id"]
            for key, value in want.items():
                assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            n = int(want["mask_valid"].sum())
            assert n == min(max_masks, n_masks)  # no synthetic mask is empty or > 90 %
            assert (got["masks"][:n].reshape(n, -1).sum(1) > 0).sum() >= n // 2
            compared += n
    assert compared == sum(2 * min(max_masks, len(js["annotations"])) for *_, js in records)


def test_decode_counts_many_matches_pycocotools_and_names_the_bad_mask(records):
    _, _, js = records[0]
    segs = [a["segmentation"] for a in js["annotations"]]
    H, W = segs[0]["size"]
    cnt, offsets = rle.decode_counts_many([s["counts"] for s in segs], H, W)
    assert offsets.shape == (len(segs) + 1,) and offsets[-1] == len(cnt)
    np.testing.assert_array_equal(rle.areas(cnt, offsets), mask_utils.area(segs))
    dense = mask_utils.decode(segs)
    for i in (0, len(segs) // 2, len(segs) - 1):
        flat = np.repeat(np.arange(offsets[i + 1] - offsets[i]) % 2, cnt[offsets[i] : offsets[i + 1]])
        np.testing.assert_array_equal(flat.reshape(W, H).T, dense[:, :, i])
    bad = [s["counts"] for s in segs[:3]] + ["0a"]  # runs do not sum to H * W
    with pytest.raises(rle.RleError, match="^mask 3: "):
        rle.decode_counts_many(bad, H, W)
    with pytest.raises(rle.RleError, match="^mask 1: .*alphabet"):
        rle.decode_counts_many([segs[0]["counts"], "\x7f"], H, W)


def test_pipeline_cpu_benchmark_mode_produces_its_figures():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "pipeline-cpu", "--tiny", "--no-official"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    by_what = {r["what"]: r for r in lines if r.get("bench") == "pipeline_cpu"}
    assert set(by_what) == {"profile", "throughput"}
    prof = by_what["profile"]["cpu_ms_per_image_single_thread"]
    for stage in ("jpeg_decode", "resize", "normalize_pad", "rle_decode_area", "boxes_points", "grid"):
        assert prof[stage] >= 0
    assert prof["process_record"] > 0
    tp = by_what["throughput"]
    assert tp["images"] == 8 and tp["images_per_cpu_second"] > 0 and tp["images_per_second"] > 0
    assert tp["statuses"]["ok"] >= 8 and tp["masks_per_image"] > 0
