"""Training configurations and the ONE config loader.

Each ``configs/<name>.py`` has ``get_config()`` (shared values in ``configs.base``).
Every tool (``python -m train``, ``python -m train.evaluate``, a sweep) reads its
config the same way: its own argparse options, then :func:`parse_config_args`,
which adds ``--config FILE_OR_NAME`` and accepts ``--config.<dotted.key>=<value>``
overrides::

    parser = argparse.ArgumentParser(prog="python -m train.evaluate")
    parser.add_argument("--workdir", required=True)
    args, config = parse_config_args(parser, argv)

A value is read as a Python literal where it is one (``3``, ``1e-3``, ``True``,
``(1, 2)``, ``{"data": 8}``), else as a string. :func:`load_config` is the same
without argparse (a file or a name such as ``tiny``, and ``key=value`` strings).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from configs.base import ConfigError, validate_config

__all__ = ["ConfigError", "config_path", "load_config", "parse_config_args", "validate_config"]

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
PREFIX = "--config."


def config_path(name_or_path: str) -> str:
    """A config file path as given, or ``configs/<name>.py`` for a bare name (``tiny``)."""
    if os.path.exists(name_or_path):
        return name_or_path
    by_name = os.path.join(CONFIG_DIR, f"{name_or_path}.py")
    if os.sep not in name_or_path and os.path.exists(by_name):
        return by_name
    raise FileNotFoundError(f"config file not found: {name_or_path}")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file with ``dotted.key=value`` overrides applied, checked
    by :func:`configs.base.validate_config` (raises ``ConfigError`` naming the key)."""
    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location("_sam_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        _override(config, item)
    return validate_config(config)


def _override(config: ml_collections.ConfigDict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *parents, leaf = names = key.split(".")
    node = config
    for i, name in enumerate(names):
        prefix = ".".join(names[:i])
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"{prefix!r} is a value, not a section (override {item!r})")
        if name not in node:
            what = f"{prefix or 'the config'} has {', '.join(sorted(node))}"
            if i < len(parents):
                what = f"no section {'.'.join(names[: i + 1])!r}; {what}"
            raise ConfigError(f"unknown config key {key!r} ({what})")
        if i < len(parents):
            node = node[name]
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
        value = ml_collections.ConfigDict(value)
    try:
        node[leaf] = value
    except TypeError:
        raise ConfigError(f"config key {key!r} expects a {type(old).__name__}, got {raw!r}") from None


def parse_config_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """``(args, config)``: ``parser``'s options plus ``--config`` and its overrides.

    A missing file, an unknown key or a malformed override ends with a one-line
    usage error (exit status 2).
    """
    parser.add_argument(
        "--config",
        "-c",
        required=True,
        help=f"configs/<name>.py or a name (tiny, vit_b, ...); then {PREFIX}<key>=<value> overrides",
    )
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith(PREFIX)]
    if bad:
        parser.error(f"unrecognised arguments {bad} (overrides are {PREFIX}key=value)")
    try:
        config = load_config(args.config, [r[len(PREFIX) :] for r in rest])
    except (FileNotFoundError, KeyError, ValueError) as e:
        parser.error(str(e.args[0]) if isinstance(e, KeyError) else str(e))
    return args, config
