"""Reading OpenAI CLIP checkpoints without torch and without running their code.

The released files (``ViT-B-16.pt``, ``ViT-L-14-336px.pt``, ...) are TorchScript
archives: a zip whose ``data.pkl`` pickles the module tree (objects of
``__torch__.*`` classes whose attributes are tensors, submodules and plain values)
next to ``code/`` (TorchScript source, never read here) and ``data/<n>`` (raw
tensor storages). :func:`read_clip_state_dict` unpickles ``data.pkl`` with the
restricted unpickler of :mod:`sam_jax.checkpoint`, widened only by an inert
attribute holder for the ``__torch__.*`` classes (no method of the file is ever
looked up or called), and flattens the tree into the state dict
``torch.jit.load(f).state_dict()`` would give. A plain ``torch.save``-d state
dict is read too.

:func:`clip_params` maps the tensors one to one onto a parameter template of our
CLIP; :func:`sam_jax.clip.model.load_clip` infers the architecture from their shapes.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sam_jax.checkpoint import UnsafeCheckpointError, _RestrictedUnpickler, read_pth, state_dict_to_params

# Tensors a TorchScript CLIP carries that are not parameters of the model.
NON_PARAMETERS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class _ScriptObject:
    """Stands for a pickled TorchScript module: holds its attributes, runs nothing."""

    attributes: ClassVar[dict] = {}

    def __setstate__(self, state):
        if not isinstance(state, Mapping):
            raise UnsafeCheckpointError(f"TorchScript object with non-dict state {type(state).__name__}")
        self.attributes = dict(state)


class _ScriptUnpickler(_RestrictedUnpickler):
    """The SAM reader's unpickler plus ``__torch__.*`` classes as :class:`_ScriptObject`."""

    # Type-tag helpers TorchScript may write around typed lists and dicts; data only.
    _TYPE_TAGS: ClassVar[dict] = {
        "restore_type_tag": lambda value, _type=None: value,
        "build_intlist": list,
        "build_doublelist": list,
        "build_boollist": list,
        "build_tensorlist": list,
    }

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {})
        if module == "torch.jit._pickle" and name in self._TYPE_TAGS:
            return self._TYPE_TAGS[name]
        return super().find_class(module, name)


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(obj, np.ndarray):
        out[prefix[:-1]] = obj
    elif isinstance(obj, _ScriptObject):
        for k, v in obj.attributes.items():
            _flatten(v, f"{prefix}{k}.", out)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{key: array}`` of an OpenAI CLIP TorchScript archive or a plain state dict.

    Raises:
      FileNotFoundError, UnsafeCheckpointError, ValueError (see ``read_pth``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip archive (TorchScript .pt or torch.save state dict)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not any("/code/" in n for n in names):
            return read_pth(path)
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            root = _ScriptUnpickler(io.BytesIO(f.read()), archive, prefix, path).load()
    out: dict[str, np.ndarray] = {}
    _flatten(root, "", out)
    if not out:
        raise ValueError(f"{path} holds no tensors")
    return out


def clip_parameters(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the non-parameter tensors (``attn_mask``, ``input_resolution``, ...)."""
    return {k: v for k, v in state_dict.items() if k.split(".")[-1] not in NON_PARAMETERS}


def _as_sam_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Spell CLIP's block norms ``ln_1``/``ln_2`` as the SAM mapping reads our paths.

    :func:`sam_jax.checkpoint.torch_key` reads a trailing ``_N`` as a list index, so our
    ``resblocks_3/ln_1/scale`` is looked up as ``resblocks.3.ln.1.weight``; the OpenAI key
    is ``resblocks.3.ln_1.weight``.
    """
    return {re.sub(r"\.ln_(\d)\.", r".ln.\1.", k): v for k, v in state_dict.items()}


def clip_params(state_dict: Mapping[str, np.ndarray], template: Any) -> dict:
    """A CLIP state dict (parameters only) onto a parameter ``template`` of our CLIP.

    Raises ``CheckpointMismatchError`` naming missing/unexpected/wrongly shaped keys.
    """
    return state_dict_to_params(_as_sam_keys(state_dict), template)
