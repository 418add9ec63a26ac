"""The annotation tool's JSON API through Starlette's test client: every endpoint, the
storage guarantees, bad input, and the real tiny SAM through the endpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from benchmarks.annotate_stub import StubGenerator, StubPredictor, iou, synthetic_scene
from configs.tiny import TINY_64
from sam_jax import cli
from sam_jax.annotate.server import create_app, mask_to_runs, runs_to_mask
from sam_jax.annotate.store import AnnotationStore, annotation_stats, image_id_of
from sam_jax.sa1b_json import decode_mask

H, W = 150, 200
SMALL = TINY_64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    images = root / "images"
    images.mkdir()
    gt = {}
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        image, labels = synthetic_scene(H, W, seed=i)
        Image.fromarray(image).save(images / name)
        gt[name] = labels
    (images / "notes.txt").write_text("not an image")
    Image.fromarray(synthetic_scene(H, W)[0]).save(root / "secret.png")
    os.symlink(root / "secret.png", images / "link.png")
    return root, gt


def _client(root: Path, out: str, **kw) -> TestClient:
    kw.setdefault("make_predictor", StubPredictor)
    return TestClient(create_app(root / "images", root / out, **kw))


def _doc(root: Path, out: str, stem: str) -> dict:
    return json.loads((root / out / f"{stem}.json").read_text())


def test_mask_transport_round_trip():
    rng = np.random.default_rng(0)
    m = rng.random((7, 5)) > 0.5
    runs = mask_to_runs(m)
    assert sum(runs) == 35 and np.array_equal(runs_to_mask(runs, 7, 5), m)
    flat = m.reshape(-1)  # row-major, background first
    assert runs[0] == (0 if flat[0] else int(np.argmax(flat)))


def test_list_and_serve_only_inside_the_folder(folder):
    root, _ = folder
    c = _client(root, "out_serve")
    listing = c.get("/api/images").json()
    assert [x["name"] for x in listing["images"]] == ["a.png", "b.png", "c.png"]
    assert listing["total"] == 3 and listing["done"] == 0
    r = c.get("/api/image", params={"name": "a.png"})
    assert r.status_code == 200 and r.content == (root / "images" / "a.png").read_bytes()
    assert c.get("/").status_code == 200 and "app.js" in c.get("/").text
    assert c.get("/static/app.js").status_code == 200
    for name, status in [
        ("../secret.png", 400),
        (str(root / "secret.png"), 400),
        ("/etc/passwd", 400),
        ("link.png", 403),
        ("sub/../a.png", 400),
        ("..", 400),
        ("nope.png", 404),
        ("notes.txt", 404),
        ("a.png\x00.txt", 400),
        ("C:\\x.png", 400),
    ]:
        r = c.get("/api/image", params={"name": name})
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["error"]
    assert c.get("/api/image").status_code == 400
    for raw in ["/static/../../secret.png", "/static/..%2f..%2fsecret.png", "/static/%2e%2e/app.js"]:
        r = c.get(raw)
        assert r.status_code == 404, (raw, r.status_code)


def test_decode_feeds_logits_back_and_embeds_once(folder):
    root, gt = folder
    StubPredictor.set_image_calls = 0
    app = create_app(root / "images", root / "out_decode", make_predictor=StubPredictor)
    c = TestClient(app)
    engine = app.state.engine
    view = c.post("/api/open", json={"image": "a.png"}).json()
    assert view["image"] == {"name": "a.png", "width": W, "height": H} and view["annotations"] == []
    r1 = c.post("/api/decode", json={"image": "a.png", "points": [[40, 60, 1]]}).json()
    mask1 = runs_to_mask(r1["mask"]["counts"], H, W)
    assert iou(mask1, gt["a.png"] == 1) == 1.0 and r1["area"] == int((gt["a.png"] == 1).sum())
    assert r1["score"] == pytest.approx(0.97) and r1["stability"] == 1.0
    predictor = engine._cache["a.png"][0]
    first_low = predictor.last_low_res[1]  # the best of the 3 (iou 0.97)
    # second click (background, on the disk) with the previous logits as the mask prompt
    r2 = c.post(
        "/api/decode",
        json={"image": "a.png", "points": [[40, 60, 1], [130, 60, 0]], "mask_input": r1["decode_id"]},
    ).json()
    call = predictor.calls[-1]
    assert call["mask_input"].shape == (1, 256, 256)
    assert np.array_equal(call["mask_input"][0], first_low)
    assert call["multimask"] is False and predictor.calls[0]["multimask"] is True
    assert call["labels"].tolist() == [1, 0]
    # a box alone
    r3 = c.post("/api/decode", json={"image": "a.png", "box": [100, 20, 170, 110]}).json()
    assert iou(runs_to_mask(r3["mask"]["counts"], H, W), gt["a.png"] == 2) == 1.0
    assert r2["decode_id"] != r1["decode_id"]
    assert engine.embeds == 1 and StubPredictor.set_image_calls == 1 and engine.decodes == 3


def test_warmup_decodes_the_page_prompt_shapes_once_per_size(folder):
    root, _ = folder
    app = create_app(root / "images", root / "out_warm", make_predictor=StubPredictor, warmup=True)
    c = TestClient(app)
    engine = app.state.engine
    c.post("/api/open", json={"image": "a.png"})
    calls = engine._cache["a.png"][0].calls
    assert [
        (
            None if k["points"] is None else len(k["points"]),
            k["mask_input"] is not None,
            k["box"] is not None,
            k["multimask"],
        )
        for k in calls
    ] == [
        (1, False, False, True),
        (2, True, False, False),
        (4, True, False, False),
        (8, True, False, False),
        (None, False, True, False),
    ]
    c.post("/api/open", json={"image": "b.png"})  # same size: no second warm-up
    assert len(engine._cache["b.png"][0].calls) == 0 and engine.decodes == 0
    r = c.post("/api/decode", json={"image": "a.png", "points": [[40, 60, 1]]}).json()
    assert r["area"] > 0 and engine.decodes == 1


def test_accept_delete_undo_write_sa1b(folder):
    root, gt = folder
    c = _client(root, "out_edit")
    c.post("/api/open", json={"image": "a.png"})
    d = c.post("/api/decode", json={"image": "a.png", "points": [[40, 60, 1]]}).json()
    r = c.post(
        "/api/accept",
        json={
            "image": "a.png",
            "mask": d["mask"],
            "decode_id": d["decode_id"],
            "seconds": 4.25,
            "points": [[40, 60, 1]],
        },
    )
    assert r.status_code == 200
    first = r.json()["id"]
    doc = _doc(root, "out_edit", "a")
    assert doc["image"] == {"image_id": image_id_of("a.png"), "width": W, "height": H, "file_name": "a.png"}
    (ann,) = doc["annotations"]
    assert ann["id"] == first and ann["source"] == "manual" and ann["seconds"] == 4.25
    assert iou(decode_mask(ann["segmentation"]), gt["a.png"] == 1) == 1.0
    assert ann["area"] == int((gt["a.png"] == 1).sum()) and ann["point_coords"] == [[40.0, 60.0]]
    assert ann["predicted_iou"] == pytest.approx(0.97) and ann["stability_score"] == 1.0
    ys, xs = np.nonzero(gt["a.png"] == 1)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert ann["crop_box"] == [0, 0, W, H]
    # a hand-drawn mask (brush, no decode): scores 1, point inside the mask
    drawn = np.zeros((H, W), bool)
    drawn[5:15, 150:190] = True
    second = c.post(
        "/api/accept", json={"image": "a.png", "mask": {"counts": mask_to_runs(drawn)}, "seconds": 2}
    ).json()["id"]
    ann2 = _doc(root, "out_edit", "a")["annotations"][1]
    x, y = ann2["point_coords"][0]
    assert ann2["predicted_iou"] == 1.0 and drawn[int(y), int(x)] and second == first + 1
    ids = lambda: [a["id"] for a in _doc(root, "out_edit", "a")["annotations"]]
    assert c.post("/api/delete", json={"image": "a.png", "id": first}).status_code == 200
    assert ids() == [second]
    assert c.post("/api/undo", json={"image": "a.png"}).json()["undone"] == "delete"
    assert ids() == [first, second]
    assert c.post("/api/undo", json={"image": "a.png"}).json() | {} and ids() == [first]
    assert c.post("/api/undo", json={"image": "a.png"}).json()["undone"] == "accept"
    assert ids() == []
    r = c.post("/api/undo", json={"image": "a.png"})
    assert r.status_code == 409 and "nothing to undo" in r.json()["error"]
    # ids are never reused
    d = c.post("/api/decode", json={"image": "a.png", "points": [[40, 60, 1]]}).json()
    third = c.post(
        "/api/accept", json={"image": "a.png", "mask": d["mask"], "decode_id": d["decode_id"], "seconds": 1}
    ).json()["id"]
    assert third == second + 1
    assert c.get("/api/annotations", params={"image": "a.png"}).json()["annotations"][0]["id"] == third
    listing = c.get("/api/images").json()
    assert listing["done"] == 1 and listing["images"][0]["manual"] == 1


def test_prefill_once_and_resume_after_restart(folder):
    root, gt = folder
    gen = StubGenerator(keep=(2, 3))
    c = _client(root, "out_prefill", generator=gen)
    view = c.post("/api/open", json={"image": "b.png"}).json()
    assert view["prefilled"] and [a["source"] for a in view["annotations"]] == ["auto", "auto"]
    masks = [decode_mask(a["segmentation"]) for a in view["annotations"]]
    assert [iou(m, gt["b.png"] == k) for m, k in zip(masks, (2, 3))] == [1.0, 1.0]
    c.post("/api/open", json={"image": "b.png"})
    assert gen.calls == 1
    auto_id = view["annotations"][0]["id"]
    assert c.post("/api/delete", json={"image": "b.png", "id": auto_id}).status_code == 200
    # restart: a new app on the same folders resumes from the files and does not prefill again
    gen2 = StubGenerator(keep=(1, 2, 3))
    c2 = _client(root, "out_prefill", generator=gen2)
    view2 = c2.post("/api/open", json={"image": "b.png"}).json()
    assert gen2.calls == 0 and [a["id"] for a in view2["annotations"]] == [auto_id + 1]
    assert c2.post("/api/undo", json={"image": "b.png"}).json()["undone"] == "delete"  # history on disk
    assert [a["id"] for a in _doc(root, "out_prefill", "b")["annotations"]] == [auto_id, auto_id + 1]
    d = c2.post("/api/decode", json={"image": "b.png", "points": [[40, 60, 1]]}).json()
    new = c2.post(
        "/api/accept", json={"image": "b.png", "mask": d["mask"], "decode_id": d["decode_id"], "seconds": 3}
    ).json()["id"]
    assert new == auto_id + 2


def test_two_tabs_never_corrupt_a_file(folder):
    """Two clients of one server and a second server (own store, own locks) accept on
    the same image at once: every mask survives and the file stays valid."""
    root, _ = folder
    tabs = [_client(root, "out_tabs"), _client(root, "out_tabs")]
    other_store = AnnotationStore(root / "out_tabs")
    mask = np.zeros((H, W), bool)
    mask[10:20, 10:20] = True
    runs = mask_to_runs(mask)
    errors = []

    def tab(c):
        for _ in range(8):
            r = c.post("/api/accept", json={"image": "c.png", "mask": {"counts": runs}, "seconds": 1})
            if r.status_code != 200:
                errors.append(r.text)

    def other():
        from sam_jax.sa1b_json import mask_record

        rec = mask_record(mask, point_coords=[[15, 15]], predicted_iou=1, stability_score=1)
        info = {"image_id": image_id_of("c.png"), "width": W, "height": H, "file_name": "c.png"}
        for _ in range(8):
            other_store.accept("c", info, rec, "manual", 1.0)

    threads = [threading.Thread(target=tab, args=(t,)) for t in tabs] + [threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    anns = _doc(root, "out_tabs", "c")["annotations"]
    assert len(anns) == 24 and len({a["id"] for a in anns}) == 24
    assert not [p for p in (root / "out_tabs").iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path):
    from sam_jax.atomic_io import write_json

    path = tmp_path / "x.json"
    write_json(path, {"annotations": [1]})
    with pytest.raises(TypeError):
        write_json(path, {"annotations": [object()]})  # fails half-way through json.dump
    assert json.loads(path.read_text()) == {"annotations": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_broken_annotation_file_is_reported_not_overwritten(folder):
    root, _ = folder
    out = root / "out_broken"
    out.mkdir()
    c = _client(root, "out_broken")
    for text, problem in [
        ("{not json", "bad JSON"),
        ('{"image": {}, "annotations": [{"id": 1}]}', "lacks an integer id or a COCO RLE segmentation"),
    ]:
        (out / "a.json").write_text(text)
        listing = c.get("/api/images").json()
        assert problem in listing["images"][0]["error"] and "error" not in listing["images"][1]
        for path, body in [
            ("/api/open", {"image": "a.png"}),
            ("/api/undo", {"image": "a.png"}),
            ("/api/delete", {"image": "a.png", "id": 1}),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 409 and problem in r.json()["error"], (path, r.text)
        assert (out / "a.json").read_text() == text


def test_the_predictors_own_refusals_are_4xx(folder):
    class Refusing(StubPredictor):
        def predict(self, *args, **kwargs):
            raise ValueError("point_labels must be in [0, 1]")

    root, _ = folder
    c = _client(root, "out_refuse", make_predictor=Refusing)
    r = c.post("/api/decode", json={"image": "a.png", "points": [[5, 5, 1]]})
    assert r.status_code == 422 and r.json()["error"] == "bad prompt: point_labels must be in [0, 1]"


def test_embedding_cache_is_bounded(folder):
    root, _ = folder
    app = create_app(
        root / "images", root / "out_cache", make_predictor=StubPredictor, cache_bytes=2 * 2048
    )  # room for two stub embeddings
    c = TestClient(app)
    engine = app.state.engine
    for name in ["a.png", "b.png", "c.png"]:
        c.post("/api/open", json={"image": name})
    assert engine.cached_images() == ["b.png", "c.png"] and engine.cached_bytes == 4096
    c.post("/api/decode", json={"image": "b.png", "points": [[5, 5, 1]]})
    assert engine.embeds == 3 and engine.cached_images() == ["c.png", "b.png"]
    c.post("/api/decode", json={"image": "a.png", "points": [[5, 5, 1]]})
    assert engine.embeds == 4 and engine.cached_images() == ["b.png", "a.png"]


BAD_INPUTS = [
    # (what, endpoint, body (dict -> JSON, bytes -> raw), status, part of the message)
    ("malformed JSON", "/api/decode", b"{bad", 400, "malformed JSON"),
    ("empty body", "/api/decode", b"", 400, "empty body"),
    ("body is a list", "/api/decode", b"[1, 2]", 400, "JSON object"),
    ("NaN coordinate", "/api/decode", b'{"image": "a.png", "points": [[NaN, 5, 1]]}', 422, "NaN"),
    (
        "Infinity coordinate",
        "/api/decode",
        b'{"image": "a.png", "points": [[Infinity, 5, 1]]}',
        422,
        "Infinity",
    ),
    ("1e999 coordinate", "/api/decode", b'{"image": "a.png", "points": [[1e999, 5, 1]]}', 422, "finite"),
    (
        "null coordinate (JS NaN)",
        "/api/decode",
        {"image": "a.png", "points": [[None, 5, 1]]},
        422,
        "must be a number",
    ),
    ("string coordinate", "/api/decode", {"image": "a.png", "points": [["5", 5, 1]]}, 422, "number"),
    ("x left of the image", "/api/decode", {"image": "a.png", "points": [[-1, 5, 1]]}, 422, "outside"),
    ("y below the image", "/api/decode", {"image": "a.png", "points": [[5, H + 1, 1]]}, 422, "outside"),
    ("label 2", "/api/decode", {"image": "a.png", "points": [[5, 5, 2]]}, 422, "label"),
    ("label true", "/api/decode", {"image": "a.png", "points": [[5, 5, True]]}, 422, "label"),
    ("point with 2 values", "/api/decode", {"image": "a.png", "points": [[5, 5]]}, 422, "[x, y, label]"),
    ("points not a list", "/api/decode", {"image": "a.png", "points": "5,5"}, 422, "list"),
    ("65 points", "/api/decode", {"image": "a.png", "points": [[5, 5, 1]] * 65}, 422, "at most 64"),
    ("no prompt", "/api/decode", {"image": "a.png"}, 422, "at least one point or a box"),
    ("inverted box", "/api/decode", {"image": "a.png", "box": [50, 50, 10, 60]}, 422, "x1 >= x0"),
    ("box outside", "/api/decode", {"image": "a.png", "box": [0, 0, W + 50, 10]}, 422, "outside"),
    ("box of 3 numbers", "/api/decode", {"image": "a.png", "box": [0, 0, 5]}, 422, "box must be"),
    ("unknown image", "/api/decode", {"image": "zzz.png", "points": [[5, 5, 1]]}, 404, "unknown image"),
    ("image missing", "/api/decode", {"points": [[5, 5, 1]]}, 400, "non-empty string"),
    (
        "image traversal",
        "/api/decode",
        {"image": "../secret.png", "points": [[5, 5, 1]]},
        400,
        "file name inside",
    ),
    ("image absolute path", "/api/open", {"image": "/etc/hostname"}, 400, "absolute"),
    ("image symlink out", "/api/open", {"image": "link.png"}, 403, "outside the images folder"),
    (
        "unknown mask_input",
        "/api/decode",
        {"image": "a.png", "points": [[5, 5, 1]], "mask_input": "abc"},
        422,
        "not a recent decode",
    ),
    (
        "mask_input a number",
        "/api/decode",
        {"image": "a.png", "points": [[5, 5, 1]], "mask_input": 3},
        422,
        "decode_id string",
    ),
    (
        "multimask a string",
        "/api/decode",
        {"image": "a.png", "points": [[5, 5, 1]], "multimask": "yes"},
        422,
        "true or false",
    ),
    ("accept without mask", "/api/accept", {"image": "a.png", "seconds": 1}, 422, "mask must be"),
    (
        "accept counts sum wrong",
        "/api/accept",
        {"image": "a.png", "mask": {"counts": [5, 5]}},
        422,
        "sum to 10",
    ),
    (
        "accept negative count",
        "/api/accept",
        {"image": "a.png", "mask": {"counts": [H * W + 1, -1]}},
        422,
        "non-negative",
    ),
    (
        "accept float counts",
        "/api/accept",
        {"image": "a.png", "mask": {"counts": [H * W / 2] * 2}},
        422,
        "integers",
    ),
    ("accept empty mask", "/api/accept", {"image": "a.png", "mask": {"counts": [H * W]}}, 422, "empty"),
    (
        "accept negative seconds",
        "/api/accept",
        {"image": "a.png", "mask": {"counts": [1, H * W - 1]}, "seconds": -3},
        422,
        "seconds must be in",
    ),
    (
        "accept NaN seconds",
        "/api/accept",
        (b'{"image": "a.png", "mask": {"counts": [1, 29999]}, "seconds": NaN}'),
        422,
        "NaN",
    ),
    ("delete id a string", "/api/delete", {"image": "a.png", "id": "1"}, 422, "integer"),
    ("delete unknown id", "/api/delete", {"image": "a.png", "id": 999}, 404, "no annotation with id 999"),
    ("undo unknown image", "/api/undo", {"image": "x.png"}, 404, "unknown image"),
    ("annotations without image", "/api/annotations", None, 400, "non-empty string"),
    ("body over the limit", "/api/accept", b"{" + b" " * (70 * 1024) + b"}", 413, "over the limit"),
]


def test_bad_inputs_get_4xx_with_a_message(folder, capsys):
    root, _ = folder
    c = _client(root, "out_bad", max_body_bytes=64 * 1024)
    c.post("/api/open", json={"image": "a.png"})
    table = []
    for what, path, body, status, needle in BAD_INPUTS:
        if body is None:
            r = c.get(path)
        elif isinstance(body, bytes):
            r = c.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = c.post(path, json=body)
        msg = r.json().get("error", "")
        table.append(f"{what}: {r.status_code} {msg}")
        assert r.status_code == status, (what, r.status_code, msg)
        assert needle in msg, (what, msg)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    try:
        for path in ("/api/open", "/api/decode"):
            r = c.post(path, json={"image": "broken.png", "points": [[1, 1, 1]]})
            assert r.status_code == 422 and "cannot read image" in r.json()["error"]
            table.append(f"corrupt image file ({path}): {r.status_code} {r.json()['error']}")
    finally:
        (root / "images" / "broken.png").unlink()
    r = c.get("/api/decode")
    assert r.status_code == 405 and r.json()["error"]
    table.append(f"GET on a POST endpoint: {r.status_code} {r.json()['error']}")
    assert c.get("/api/nothing").status_code == 404
    assert not (root / "out_bad" / "a.json").exists()  # nothing bad was stored
    with capsys.disabled():
        print("\nbad inputs -> responses:\n  " + "\n  ".join(table))


def test_stats_export_and_the_pipeline_reader(folder, capsys):
    """Saved JSON parses with data/sa1b.py, and data.pipeline reads the exported shard with
    zero bad samples."""
    from data import sa1b
    from data.pipeline import Pipeline

    root, _ = folder
    c = _client(root, "out_export", generator=StubGenerator(keep=(2,)))
    for name, secs in [("a.png", 3.0), ("b.png", 5.0)]:
        c.post("/api/open", json={"image": name})
        d = c.post("/api/decode", json={"image": name, "points": [[40, 60, 1]]}).json()
        c.post(
            "/api/accept",
            json={"image": name, "mask": d["mask"], "decode_id": d["decode_id"], "seconds": secs},
        )
    stats = annotation_stats(root / "out_export")
    assert stats["masks"] == 4 and stats["manual_masks"] == 2 and stats["auto_masks"] == 2
    assert stats["masks_per_image"] == 2.0 and stats["seconds_per_manual_mask"] == 4.0
    cli.main(["annotate", "--stats", str(root / "out_export")])
    out = capsys.readouterr().out
    assert "masks per image:         2.00" in out and "seconds per manual mask: 4.00" in out
    for stem in "ab":  # the saved files themselves
        ann = sa1b.parse_payload((root / "out_export" / f"{stem}.json").read_bytes(), sa1b.PAYLOAD_JSON)
        assert (ann.height, ann.width) == (H, W) and len(ann.counts) == 2
    r = c.post("/api/export").json()
    assert r["images"] == 2 and r["masks"] == 4
    pipe = Pipeline(
        r["path"],
        batch_size=2,
        model_size=64,
        max_masks=4,
        num_epochs=1,
        shuffle=False,
        process_index=0,
        process_count=1,
    )
    batches = list(pipe)
    assert len(batches) == 1 and batches[0]["status"].tolist() == [0, 0]
    assert batches[0]["mask_valid"].sum(axis=1).tolist() == [2, 2]
    counts = pipe.stats()
    assert counts["ok"] == 2 and sum(counts.values()) == 2  # zero bad samples


def test_real_tiny_sam_through_the_endpoints(folder):
    """The real inference core behind the API: SamPredictor decodes with the previous
    logits as mask input, one embedding per image; the AMG prefills."""
    from sam_jax import SamAutomaticMaskGenerator, SamPredictor, build_sam

    root, _ = folder
    model = build_sam(SMALL, seed=0)
    gen = SamAutomaticMaskGenerator(
        model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle"
    )
    app = create_app(
        root / "images", root / "out_real", make_predictor=lambda: SamPredictor(model), generator=gen
    )
    c = TestClient(app)
    view = c.post("/api/open", json={"image": "a.png"}).json()
    assert view["prefilled"] and view["annotations"]
    assert all(a["source"] == "auto" for a in view["annotations"])
    r1 = c.post("/api/decode", json={"image": "a.png", "points": [[40, 60, 1]]})
    assert r1.status_code == 200
    r1 = r1.json()
    r2 = c.post(
        "/api/decode",
        json={"image": "a.png", "points": [[40, 60, 1], [150, 130, 0]], "mask_input": r1["decode_id"]},
    ).json()
    for r in (r1, r2):
        m = runs_to_mask(r["mask"]["counts"], H, W)
        assert m.sum() == r["area"] and 0 <= r["stability"] <= 1 and np.isfinite(r["score"])
    if r2["area"] == 0:
        pytest.skip("random tiny model predicted an empty mask")
    acc = c.post(
        "/api/accept",
        json={"image": "a.png", "mask": r2["mask"], "decode_id": r2["decode_id"], "seconds": 2.0},
    )
    assert acc.status_code == 200
    saved = _doc(root, "out_real", "a")["annotations"][-1]
    assert saved["source"] == "manual" and saved["predicted_iou"] == pytest.approx(r2["score"])
    assert np.array_equal(decode_mask(saved["segmentation"]), runs_to_mask(r2["mask"]["counts"], H, W))
    assert app.state.engine.embeds == 1 and app.state.engine.decodes == 2


def test_cli_annotate_serves_on_localhost(folder):
    root, _ = folder
    with pytest.raises(SystemExit, match="give IMAGES_DIR"):
        cli.main(["annotate", str(root / "images")])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["annotate", str(root / "missing"), "--out", str(root / "o")])
    config = json.dumps(dataclasses.asdict(SMALL))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam_jax.cli",
            "annotate",
            str(root / "images"),
            "--out",
            str(root / "out_cli"),
            "--port",
            "0",
            "--config-json",
            config,
        ],
        stdout=subprocess.PIPE,
        stderr=(root / "cli.err").open("w"),
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "open http://127.0.0.1:" in line, (line, (root / "cli.err").read_text())
        url = line.split("open ")[1].split()[0]
        with urllib.request.urlopen(url + "api/images", timeout=30) as r:
            listing = json.loads(r.read())
        assert listing["total"] == 3
        drawn = np.zeros((H, W), bool)
        drawn[30:60, 40:90] = True  # a hand-drawn mask: accept needs no model call
        body = json.dumps({"image": "b.png", "mask": {"counts": mask_to_runs(drawn)}, "seconds": 7}).encode()
        req = urllib.request.Request(
            url + "api/accept", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
        proc.kill()  # SIGKILL right after the accept: the mask is on disk already
        proc.wait(timeout=30)
        (ann,) = _doc(root, "out_cli", "b")["annotations"]
        assert np.array_equal(decode_mask(ann["segmentation"]), drawn) and ann["seconds"] == 7
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
