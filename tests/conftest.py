"""Suite-wide setup: one persistent XLA compilation cache per test session.

Many tests build the same tiny model again: in a new ``Trainer`` of ``train.loop.run``
(each run of a resumption test), a new predictor, or a subprocess (the CLI and
multi-process tests). With the cache an identical computation compiles once per session
and is loaded after that (the demo's train step: 11 s instead of 46 s, its state's
initialisation 3 s instead of 20 s). The cache is fresh for every session (nothing
carries over from a run of other code) and removed at its end; a
``JAX_COMPILATION_CACHE_DIR`` set by the caller is used as it is and kept.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    if os.environ.get(_ENV):
        return
    path = tempfile.mkdtemp(prefix="sam_jax_xla_cache_")
    config._sam_jax_xla_cache = path
    os.environ[_ENV] = path  # read when jax is imported, here and by subprocesses
    if "jax" in sys.modules:  # imported already (by a plugin): tell it directly
        sys.modules["jax"].config.update("jax_compilation_cache_dir", path)


def pytest_unconfigure(config):
    path = getattr(config, "_sam_jax_xla_cache", None)
    if path:
        os.environ.pop(_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
