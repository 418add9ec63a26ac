"""The sam-jax command line on a tiny model and a generated image."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from configs.tiny import TINY
from sam_jax import build_sam, cli  # noqa: E402
from sam_jax.checkpoint import save_params  # noqa: E402

CONFIG = json.dumps(dataclasses.asdict(TINY))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_params(build_sam(TINY, seed=2).params, d / "tiny.npz")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image[10:30, 20:40] = 200
    Image.fromarray(image).save(d / "img.png")
    return d


def _model_args(files):
    return ["--checkpoint", str(files / "tiny.npz"), "--config-json", CONFIG]


def test_segment_writes_masks_and_overlay(files, capsys):
    out = files / "seg"
    cli.main(
        [
            "segment",
            str(files / "img.png"),
            "--point",
            "30,20",
            "--point",
            "5,5,0",
            "--box",
            "15,5,45,35",
            "--out",
            str(out),
        ]
        + _model_args(files)
    )
    masks = [np.asarray(Image.open(out / f"img_mask{i}.png")) for i in range(3)]
    for m in masks:
        assert m.shape == (48, 64) and set(np.unique(m)) <= {0, 255}
    overlay = np.asarray(Image.open(out / "img_overlay.png"))
    assert overlay.shape == (48, 64, 3)
    scores = json.loads((out / "img_scores.json").read_text())
    assert len(scores["predicted_iou"]) == 3 and 0 <= scores["best"] < 3
    assert "random" not in capsys.readouterr().err.lower()


def test_segment_without_checkpoint_warns(files, capsys):
    cli.main(
        [
            "segment",
            str(files / "img.png"),
            "--point",
            "30,20",
            "--single",
            "--out",
            str(files / "seg2"),
            "--config-json",
            CONFIG,
        ]
    )
    assert "RANDOM weights" in capsys.readouterr().err
    assert (files / "seg2" / "img_mask0.png").exists()
    assert not (files / "seg2" / "img_mask1.png").exists()


def test_segment_rejects_bad_prompts(files):
    with pytest.raises(SystemExit):
        cli.main(["segment", str(files / "img.png"), "--point", "3", "--out", str(files)])
    with pytest.raises(SystemExit, match="x1 >= x0"):
        cli.main(
            ["segment", str(files / "img.png"), "--box", "40,5,10,20", "--out", str(files / "bad")]
            + _model_args(files)
        )


def test_generate_folder_writes_sa1b_json(files):
    from pycocotools import mask as mask_utils

    folder = files / "many"
    folder.mkdir()
    for i, size in enumerate([(40, 50), (30, 20)]):
        Image.fromarray(np.full(size + (3,), 60 * i, np.uint8)).save(folder / f"im{i}.jpg")
    out = files / "gen"
    cli.main(
        [
            "generate",
            str(folder),
            "--out",
            str(out),
            "--points-per-side",
            "4",
            "--pred-iou-thresh",
            "0",
            "--stability-score-thresh",
            "0",
            "--box-nms-thresh",
            "1.0",
        ]
        + _model_args(files)
    )
    for i, (h, w) in enumerate([(40, 50), (30, 20)]):
        doc = json.loads((out / f"im{i}.json").read_text())
        assert doc["image"] == {"image_id": i, "width": w, "height": h, "file_name": f"im{i}.jpg"}
        anns = doc["annotations"]
        assert anns
        for a in anns:
            assert set(a) == {
                "id",
                "segmentation",
                "bbox",
                "area",
                "predicted_iou",
                "stability_score",
                "crop_box",
                "point_coords",
            }
            seg = a["segmentation"]
            assert seg["size"] == [h, w] and isinstance(seg["counts"], str)
            m = mask_utils.decode(dict(seg, counts=seg["counts"].encode()))
            assert m.shape == (h, w) and m.sum() == a["area"]
            assert len(a["bbox"]) == 4 and a["crop_box"] == [0, 0, w, h]
        assert np.asarray(Image.open(out / f"im{i}_overlay.png")).shape == (h, w, 3)


def test_convert(files, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from benchmarks.reference_sam import official_sam

    torch.save(official_sam(TINY, seed=0).state_dict(), tmp_path / "tiny.pth")
    cli.main(["convert", str(tmp_path / "tiny.pth"), str(tmp_path / "tiny.npz"), "--config-json", CONFIG])
    assert "wrote" in capsys.readouterr().out
    a = build_sam(TINY, checkpoint=tmp_path / "tiny.pth").params
    b = build_sam(TINY, checkpoint=tmp_path / "tiny.npz").params
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.npz")])


def test_help_for_each_command(capsys):
    for cmd in ([], ["segment"], ["generate"], ["convert"]):
        with pytest.raises(SystemExit) as e:
            cli.main(cmd + ["--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "usage" in text
        if cmd:
            assert {"segment": "--point", "generate": "--points-per-side", "convert": "dst"}[cmd[0]] in text


def test_bad_out_and_checkpoint_fail_first_in_one_line(files, monkeypatch, capsys):
    """--out that is a file or under a file: a one-line error before the model is built."""

    def no_model(args):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(cli, "_load_model", no_model)
    a_file = files / "img.png"
    for out in ("/dev/null", str(a_file), str(a_file / "sub")):
        with pytest.raises(SystemExit, match=f"error: cannot use --out {out} as the output folder"):
            cli.main(["segment", str(a_file), "--point", "10,10", "--out", out] + _model_args(files))
        with pytest.raises(SystemExit, match="cannot use --out"):
            cli.main(["generate", str(a_file), "--out", out] + _model_args(files))
        with pytest.raises(SystemExit, match="cannot use --out"):
            cli.main(["export", "--out", out] + _model_args(files))
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=f"checkpoint {files} is a directory"):
        cli.main(
            [
                "segment",
                str(a_file),
                "--point",
                "10,10",
                "--out",
                str(files / "o"),
                "--checkpoint",
                str(files),
                "--config-json",
                CONFIG,
            ]
        )
    cut = files / "cut.pth"
    cut.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SystemExit, match="cut.pth is truncated"):
        cli.main(["convert", str(cut), str(files / "cut.npz"), "--config-json", CONFIG])


def test_generate_skips_bad_images_and_counts_them(files, capsys):
    folder = files / "some_bad"
    folder.mkdir()
    (folder / "a_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    Image.fromarray(np.full((40, 50, 3), 60, np.uint8)).save(folder / "b.jpg")
    (folder / "c_empty.png").write_bytes(b"")
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(folder / "d.jpg")
    out = files / "gen_some_bad"
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", str(folder), "--out", str(out), "--points-per-side", "4"] + _model_args(files))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "skipped a_corrupt.jpg" in err and "skipped c_empty.png" in err
    assert "2 of 4 images failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["b.json", "b_overlay.png", "d.json", "d_overlay.png"]
    assert json.loads((out / "d.json").read_text())["image"]["image_id"] == 3
