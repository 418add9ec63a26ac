"""Atomic file writes: nothing a user saved is ever left half-written.

Every writer goes through a temporary file in the destination's folder, flushed and
fsynced, then ``os.replace``: readers (and a process killed mid-write) see the old file
or the new one, never a partial one. Standard library only, so ``data/`` and the
exported-artifact loader can use it without jax.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(p, "w") as f: ...`` writes ``p`` atomically (``mode`` "w" or "wb").

    The folder is created if missing; the file gets mode 0o644 (``mkstemp`` makes 0o600).
    On an exception the temporary file is removed and ``p`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump(obj, f, **dump_kwargs)`` into ``path``, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)
