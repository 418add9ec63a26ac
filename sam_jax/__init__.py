"""sam-jax: Segment Anything in JAX/Flax.

Importing the package is cheap: the public names below are loaded on first use
(PEP 562), so that the numpy-only :mod:`sam_jax.geometry` imports without jax or
flax (the jax-free input pipeline in ``data/`` relies on it).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SamModel": "sam_jax.sam_model",
    "build_sam": "sam_jax.sam_model",
    "sam_model_registry": "sam_jax.sam_model",
    "VARIANTS": "sam_jax.modeling.variants",
    "get_config": "sam_jax.modeling.variants",
    "SamPredictor": "sam_jax.predictor",
    "SamAutomaticMaskGenerator": "sam_jax.automatic_mask_generator",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sam_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
