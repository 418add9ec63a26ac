"""Proposals (7.3), instances (7.4) and the ``sam-jax eval`` entry point, with stub
models and a tiny real model."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
from eval_stubs import GTPredictor, ListGenerator
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax.evaluation import evaluate, load_dataset
from sam_jax.evaluation.datasets import masks_to_coco


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _scenes():
    h, w = 60, 80
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        masks = [
            _rect(h, w, 5 + i, 25 + i, 5, 30),
            _rect(h, w, 30, 58, 10 + 3 * i, 70),
            _rect(h, w, 2, 20, 40 + i, 78),
        ][: 2 + (i > 0)]
        out.append(((rng.integers(0, 255, (h, w, 3))).astype(np.uint8), masks))
    return out


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("coco")
    (d / "images").mkdir()
    scenes = _scenes()
    for i, (image, _) in enumerate(scenes):
        Image.fromarray(image).save(d / "images" / f"{i}.png")
    (d / "gt.json").write_text(json.dumps(masks_to_coco(scenes)))
    return d, scenes


def _record(mask, score):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return {
        "segmentation": rle,
        "area": int(mask.sum()),
        "predicted_iou": score,
        "stability_score": score,
        "bbox": [0, 0, 1, 1],
    }


def _proposals(scenes, seed=0):
    """Per image: 12 confident decoys, then the GT masks (some shifted) less confident."""
    rng = np.random.default_rng(seed)
    out = []
    for image, masks in scenes:
        h, w = image.shape[:2]
        recs = []
        for j in range(12):
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            recs.append(_record(_rect(h, w, y, y + 5, x, x + 5), 0.95 - 0.01 * j))
        for j, m in enumerate(masks):
            recs.append(_record(np.roll(m, j * 3, axis=1), 0.5 - 0.01 * j))
        out.append(recs)
    return out


def test_proposal_ar_agrees_with_pycocotools(coco_dir):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sam_jax.evaluation.proposals import rank_proposals

    d, scenes = coco_dir
    data = load_dataset(d / "gt.json", keep_empty=True)
    props = _proposals(scenes)
    doc = evaluate("proposals", data, ListGenerator(props), progress=False)
    m = doc["metrics"]
    # pycocotools run directly on the same detections
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(d / "gt.json"))
        dets = [dict(r) for i, recs in enumerate(props) for r in rank_proposals(recs, i + 1, 1000)]
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.params.useCats = 0
        ev.params.maxDets = [10, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert m["AR@10"] == pytest.approx(ev.stats[6]) and m["AR@100"] == pytest.approx(ev.stats[7])
    assert m["AR@1000"] == pytest.approx(ev.stats[8])
    assert m["AR_medium@1000"] == pytest.approx(ev.stats[10])
    assert m["AR@10"] == 0.0 < m["AR@100"] < 1.0  # decoys fill the top 10
    assert m["proposals_per_image"] == pytest.approx((14 + 15 + 15) / 3)


def test_proposals_of_gt_masks_have_full_recall(coco_dir):
    d, scenes = coco_dir
    data = load_dataset(d / "gt.json", keep_empty=True)
    gen = ListGenerator([[_record(m, 0.9) for m in masks] for _, masks in scenes])
    m = evaluate("proposals", data, gen, progress=False)["metrics"]
    assert m["AR@10"] == pytest.approx(1.0) and m["AR@1000"] == pytest.approx(1.0)


def test_proposal_generator_has_paper_settings():
    from configs.tiny import TINY
    from sam_jax import build_sam
    from sam_jax.evaluation.proposals import ProposalSettings, proposal_generator

    gen = proposal_generator(build_sam(TINY), ProposalSettings())
    assert len(gen.point_grids) == 1 and gen.point_grids[0].shape == (64 * 64, 2)
    assert gen.pred_iou_thresh == 0.0 and gen.stability_score_thresh == 0.0
    assert gen.box_nms_thresh == 0.9 and gen.crop_n_layers == 0


def test_box_prompt_ap_with_gt_stub_is_one(coco_dir, tmp_path):
    d, scenes = coco_dir
    data = load_dataset(d / "gt.json", keep_empty=True)
    stubs = {i + 1: GTPredictor(np.stack(m)) for i, (_, m) in enumerate(scenes)}

    class PerImage:  # routes each image to the stub holding its masks
        transform = stubs[1].transform

        def set_image(self, image):
            self.cur = next(s for i, s in stubs.items() if np.array_equal(scenes[i - 1][0], image))
            self.cur.set_image(image)
            self.original_size = image.shape[:2]

        def predict_batch(self, *a, **k):
            return self.cur.predict_batch(*a, **k)

    doc = evaluate(
        "instances", data, PerImage(), out=str(tmp_path / "inst"), progress=False, boxes_per_batch=2
    )
    assert doc["metrics"]["AP"] == pytest.approx(1.0) and doc["metrics"]["AP75"] == pytest.approx(1.0)
    calls = stubs[2].calls
    assert calls[0]["multimask_output"] and not calls[1]["multimask_output"]
    assert calls[1]["mask_input"].shape == (2, 1, 8, 8) and calls[1]["boxes"].shape == (2, 4)
    # shifted masks lose AP; detector boxes from a results JSON are used instead of GT boxes
    for s in stubs.values():
        s.shift = 6
    dets = [
        {"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1}
        for a in json.loads((d / "gt.json").read_text())["annotations"]
    ][:-1]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    m = evaluate("instances", data, PerImage(), progress=False, detections=str(tmp_path / "dets.json"))[
        "metrics"
    ]
    assert m["AP"] < 0.9 and m["boxes"].endswith("dets.json")
    assert (tmp_path / "inst" / "results.json").exists() and (tmp_path / "inst" / "ap.png").exists()


def test_eval_cli_points_end_to_end_and_resume(coco_dir, tmp_path):
    """``sam-jax eval points`` on a tiny real model: files, schema, resume."""
    from configs.tiny import TINY
    from sam_jax import build_sam, cli
    from sam_jax.checkpoint import save_params

    d, _ = coco_dir
    save_params(build_sam(TINY).params, tmp_path / "tiny.npz")
    cfg = json.dumps(dataclasses.asdict(TINY))
    out = tmp_path / "out"
    argv = [
        "eval",
        "points",
        str(d / "gt.json"),
        "--checkpoint",
        str(tmp_path / "tiny.npz"),
        "--config-json",
        cfg,
        "--out",
        str(out),
        "--clicks",
        "1,2,3",
        "--quiet",
        "--max-images",
        "2",
    ]
    cli.main(argv)
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "sam-jax-eval/1" and doc["protocol"] == "points"
    assert set(doc["metrics"]["miou"]) == {"1", "2", "3"}
    assert doc["dataset"]["num_images"] == 2 and doc["dataset"]["num_masks"] == 5
    assert 0.0 <= doc["metrics"]["miou"]["3"] <= 1.0 and doc["timing"]["images"] == 2
    assert (out / "miou_vs_clicks.png").stat().st_size > 1000
    assert "| clicks | 1 | 2 | 3 |" in (out / "results.md").read_text()
    lines = (out / "per_image.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # an interrupted run (last record lost) resumes: only the missing image is computed
    (out / "per_image.jsonl").write_text(lines[0] + "\n" + lines[1][:10])
    cli.main(argv)
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["images"] == 1 and again["metrics"] == doc["metrics"]
    # other settings into the same folder: refused with a one-line error
    with pytest.raises(SystemExit, match="another evaluation"):
        cli.main(argv[:-5] + ["--clicks", "1,2", "--quiet", "--max-images", "2"])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["eval", "points", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")])


def _tree(root):
    import os

    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size if n in files else -1, st.st_mtime_ns)
    return out


def test_training_workdir_is_loaded_read_only(tmp_path):
    """``load_model`` on a workdir restores the newest checkpoint and changes nothing on
    disk, not even a leftover temporary directory of an interrupted save (which the
    trainer's checkpointer deletes)."""
    import jax

    from configs import load_config
    from sam_jax.evaluation import load_model
    from train.checkpointing import Checkpointer
    from train.sharding import make_mesh
    from train.train_step import Trainer

    config = load_config("configs/tiny.py")
    state = Trainer(config, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])).init_state(7)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=3, async_save=False)
    ckpt.save(3, state.replace(step=state.step + 3))
    ckpt.close()
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234").mkdir()  # interrupted save
    before = _tree(tmp_path)
    model, info = load_model(str(tmp_path), train_config="configs/tiny.py")
    assert _tree(tmp_path) == before
    assert info["step"] == 3 and info["image_size"] == 128
    a = jax.tree_util.tree_leaves(model.params)
    b = jax.tree_util.tree_leaves(state.params)
    assert len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="--train-config"):
        load_model(str(tmp_path))


def test_proposal_recall_by_lvis_frequency(coco_dir):
    d, scenes = coco_dir
    data = load_dataset(d / "gt.json", keep_empty=True)
    doc = data.coco_json
    doc["categories"] = [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}]
    for a in doc["annotations"]:
        a["category_id"] = 2 if a["id"] % 2 == 0 else 1
    by_id = {a["id"]: a for a in doc["annotations"]}
    # proposals: exactly the rare-category masks
    gen = ListGenerator(
        [
            [_record(m, 0.9) for m, a in zip(masks, im.annotations) if by_id[a.id]["category_id"] == 2]
            for (_, masks), im in zip(scenes, data.images)
        ]
    )
    m = evaluate("proposals", data, gen, progress=False)["metrics"]
    assert m["AR@1000_r"] == pytest.approx(1.0) and m["AR@1000_f"] == pytest.approx(0.0)
    assert "AR@1000_c" not in m and 0.0 < m["AR@1000"] < 1.0
