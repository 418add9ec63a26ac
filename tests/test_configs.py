"""The one config loader: files or names, typed overrides, one-line errors."""

import argparse

import pytest

from configs import load_config, parse_config_args


def test_names_files_and_typed_overrides():
    by_name = load_config(
        "tiny",
        [
            "optim.lr=1e-3",
            "data.synthetic=True",
            "train.num_steps=7",
            "optim.warmup_steps=5",
            "mesh.shape={'data': 2}",
            "train.workdir=/tmp/x",
            "optim.grad_clip_norm=2",
        ],
    )
    assert by_name.optim.lr == 1e-3 and by_name.data.synthetic is True
    assert by_name.train.num_steps == 7 and by_name.train.workdir == "/tmp/x"
    assert isinstance(by_name.optim.grad_clip_norm, float) and by_name.optim.grad_clip_norm == 2.0
    assert dict(by_name.mesh.shape) == {"data": 2}
    assert load_config("configs/vit_h.py").model.variant == "vit_h"


def test_every_tool_parses_the_same_way():
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--workdir", required=True)
    args, config = parse_config_args(
        parser, ["--config", "vit_b", "--workdir", "w", "--config.data.global_batch_size=16"]
    )
    assert args.workdir == "w" and config.data.global_batch_size == 16
    assert config.model.variant == "vit_b"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "nope"], "config file not found: nope"),
        (["--config", "tiny", "--config.optim.nope=1"], "unknown config key 'optim.nope'"),
        (["--config", "tiny", "--config.nope.lr=1"], "unknown config key 'nope.lr'"),
        (["--config", "tiny", "--config.optim.lr"], "is not key=value"),
        (["--config", "tiny", "--lr=1"], "unrecognised arguments"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config_args(argparse.ArgumentParser(prog="tool"), argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)
