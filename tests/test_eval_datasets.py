"""Evaluation datasets: COCO (polygons, RLE, crowd), SA-1B folders/tars, label maps
(PNG / 16-bit TIFF), mask selection, image conversion."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax.amg import mask_to_rle
from sam_jax.evaluation.datasets import DatasetError, load_dataset, masks_to_coco, select_masks, to_rgb_uint8


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_to_rgb_uint8_converts_gray_16bit_and_float():
    g16 = np.array([[1000, 2000], [3000, 1000]], np.uint16)
    out = to_rgb_uint8(g16)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 0]])
    np.testing.assert_array_equal(to_rgb_uint8(np.full((3, 4), 7, np.uint8))[..., 2], 7)
    assert to_rgb_uint8(np.zeros((2, 2, 4), np.float32)).shape == (2, 2, 3)


def test_coco_polygons_rle_and_crowd(tmp_path):
    h, w = 40, 50
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((h, w), 90, np.uint8)).save(tmp_path / "images" / "a.png")  # gray
    rect = _rect(h, w, 5, 15, 10, 30)
    rle = mask_utils.encode(np.asfortranarray(rect.astype(np.uint8)))
    runs = mask_to_rle(rect[None])[0]["counts"]  # uncompressed: column-major runs
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 0,
                "area": 200.0,
                "bbox": [10, 5, 20, 10],
                "segmentation": [[20, 20, 40, 20, 40, 35, 20, 35]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 0,
                "area": 200.0,
                "bbox": [10, 5, 20, 10],
                "segmentation": {"size": [h, w], "counts": runs},
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 0,
                "area": 200.0,
                "bbox": [10, 5, 20, 10],
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
            },
            {
                "id": 4,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 1,
                "area": 2000.0,
                "bbox": [0, 0, 50, 40],
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
            },
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path / "ann.json")
    assert ds.kind == "coco" and len(ds) == 1 and ds.num_masks == 3  # crowd ignored
    image, masks = ds.images[0].load()
    assert image.shape == (h, w, 3) and image.dtype == np.uint8 and image[0, 0, 1] == 90
    np.testing.assert_array_equal(masks[1], rect)
    np.testing.assert_array_equal(masks[2], rect)
    poly = masks[0]
    assert poly[27, 30] and not poly[10, 5] and 200 <= poly.sum() <= 400
    # COCOeval sees the file's annotations, crowd included
    assert len(ds.coco_gt()["annotations"]) == 4
    assert [a["id"] for a in ds.coco_gt(all_annotations=False)["annotations"]] == [1, 2, 3]


def test_min_area_and_seeded_subsampling():
    from sam_jax.evaluation.datasets import Annotation, EvalImage

    def images():
        return [
            EvalImage(
                i,
                f"{i}.png",
                10,
                10,
                [Annotation(100 * i + j, float(j), [0, 0, 1, 1], 1, None) for j in range(10)],
                _loader=None,
            )
            for i in range(5)
        ]

    kept, total = select_masks(images(), min_area=3)
    assert total == 35 and sum(len(im.annotations) for im in kept) == 35
    a, _ = select_masks(images(), min_area=3, max_masks=12, seed=1)
    b, _ = select_masks(images(), min_area=3, max_masks=12, seed=1)
    c, _ = select_masks(images(), min_area=3, max_masks=12, seed=2)

    def ids(s):
        return [x.id for im in s for x in im.annotations]

    assert len(ids(a)) == 12 and ids(a) == ids(b) and ids(a) != ids(c)
    assert all(x.area >= 3 for im in a for x in im.annotations)


def test_label_maps_png_and_16bit_tiff(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    lab = np.zeros((30, 40), np.uint16)
    lab[2:10, 3:13] = 1
    lab[15:25, 20:35] = 700  # ids need not be contiguous, 16-bit
    lab[26:28, 1:2] = 5  # 2 px: dropped by min_area
    Image.fromarray(lab).save(tmp_path / "lab" / "cells.tif")
    micro = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 30
    Image.fromarray(micro).save(tmp_path / "img" / "cells.tif")
    Image.fromarray((lab > 0).astype(np.uint8) * 2).save(tmp_path / "lab" / "other.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "other.png")
    ds = load_dataset(tmp_path / "img", labels=str(tmp_path / "lab"), min_area=3)
    assert ds.kind == "labelmap" and len(ds) == 2
    cells = next(im for im in ds.images if im.file_name == "cells.tif")
    image, masks = cells.load()
    assert image.dtype == np.uint8 and image[0, 0, 0] == 0 and image[-1, -1, 0] == 255
    assert masks.shape == (2, 30, 40)
    np.testing.assert_array_equal(masks[1], lab == 700)
    assert [a.area for a in cells.annotations] == [80.0, 150.0]
    assert cells.annotations[1].bbox == [20.0, 15.0, 15.0, 10.0]
    colour = (np.zeros((30, 40, 3)) + [1, 2, 3]).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "lab" / "other.png")
    with pytest.raises(DatasetError, match="label map"):
        load_dataset(tmp_path / "img", labels=str(tmp_path / "lab"))


def test_sa1b_folder_and_tar(tmp_path, monkeypatch):
    from data.synthetic import generate_image, write_shards

    write_shards(
        str(tmp_path / "shards"), 3, images_per_shard=2, seed=4, short_side=64, num_objects=3, extract=True
    )
    from_tar = load_dataset(tmp_path / "shards")
    from_folder = load_dataset(tmp_path / "shards" / "sa_000000")
    assert len(from_tar) == 3 and len(from_folder) == 2
    image, masks = from_folder.images[0].load()
    truth = generate_image(4, 0, short_side=64, num_objects=3)
    assert image.shape == truth.image.shape
    np.testing.assert_array_equal(masks, truth.masks)
    np.testing.assert_array_equal(from_tar.images[0].load()[1], truth.masks)
    # without the checkout's data/ package (the `sam-jax` script outside the repository
    # root): an error that names the command that works
    monkeypatch.setitem(sys.modules, "data.sa1b", None)
    with pytest.raises(
        DatasetError, match=r"data/ package: run from the root of a checkout as `python -m sam_jax.cli"
    ):
        load_dataset(tmp_path / "shards")


def test_masks_to_coco_round_trip(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    masks = [_rect(20, 30, 1, 5, 2, 9), _rect(20, 30, 10, 19, 0, 30)]
    doc = masks_to_coco([(image, masks)])
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "0.png")
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path / "gt.json")
    np.testing.assert_array_equal(ds.images[0].load()[1], np.stack(masks))
    assert doc["annotations"][0]["bbox"] == [2.0, 1.0, 7.0, 4.0] and doc["annotations"][1]["area"] == 270


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a COCO"):
        load_dataset(tmp_path / "bad.json")


def test_synthetic_eval_set_writes_coco_and_edge_gt(tmp_path):
    from data.synthetic import generate_image, write_eval_set
    from sam_jax.evaluation.edges import load_edge_dataset

    path = write_eval_set(str(tmp_path), 2, seed=3, short_side=64, num_objects=3)
    ds = load_dataset(path)
    assert len(ds) == 2
    truth = generate_image(3, 1, short_side=64, num_objects=3)
    image, masks = ds.images[1].load()
    np.testing.assert_array_equal(masks, truth.masks)
    edges = load_edge_dataset(str(tmp_path / "images"), str(tmp_path / "edges")).images[1].load_edges()
    assert edges.shape == (1,) + masks.shape[1:]
    for m in truth.masks:  # each mask's top row is an edge
        y0 = int(np.flatnonzero(m.any(axis=1))[0])
        assert y0 == 0 or edges[0][y0][m[y0]].all()
    assert not edges[0][~truth.masks.any(axis=0)].any()  # boundaries lie on masks
    assert 0 < edges.sum() < 0.5 * truth.masks.any(axis=0).sum()
