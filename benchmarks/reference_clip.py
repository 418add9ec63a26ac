"""OpenAI's ``clip`` package (PyPI ``openai-clip``) as the CLIP parity reference.

Builds the reference CLIP with random weights for the parity tests
(``tests/test_clip.py``, ``tests/test_text_prompt.py``). Its ``clip/__init__.py``
imports ``pkg_resources``, which recent setuptools no longer ship, so the two modules
we need (the model and the tokenizer) are loaded from their files; neither imports
anything beyond torch, numpy, ftfy and regex. Importing this module needs torch and
``openai-clip`` (the ``test`` extras) and raises ``ImportError`` without them.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_SPEC = importlib.util.find_spec("clip")
if _SPEC is None or not _SPEC.submodule_search_locations:
    raise ImportError("the CLIP reference needs openai-clip (pip install openai-clip)")


def _module(name: str):
    path = os.path.join(next(iter(_SPEC.submodule_search_locations)), f"{name}.py")
    key = f"_openai_clip_{name}"
    if key not in sys.modules:
        mod_spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def clip_model_module():
    """``clip.model`` (``CLIP``, ``build_model``)."""
    return _module("model")


def clip_tokenizer_module():
    """``clip.simple_tokenizer`` (``SimpleTokenizer``)."""
    return _module("simple_tokenizer")


def official_clip(
    embed_dim=32,
    image_size=64,
    patch_size=16,
    vision_width=128,
    vision_layers=2,
    text_width=64,
    text_heads=2,
    text_layers=2,
    seed=0,
):
    """The OpenAI ``CLIP`` (ViT; vision heads = width // 64) with random weights, eval mode.

    Every parameter gets extra noise so that none keeps a trivial init (LayerNorm ones).
    """
    torch.manual_seed(seed)
    model = clip_model_module().CLIP(
        embed_dim,
        image_size,
        vision_layers,
        vision_width,
        patch_size,
        77,
        49408,
        text_width,
        text_heads,
        text_layers,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()
