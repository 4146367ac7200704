"""Writing files so that readers see the old one or the whole new one, never half of it.

Every writer of b2b goes through here: a file is written under a temporary name in the same folder,
flushed to disk, and renamed over its final name; a failed write removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def temporary_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed to ``path`` (after an fsync) when the block
    ends normally, removed when it raises. The temporary name keeps the suffix (numpy, safetensors and
    PIL pick the format from it) and holds the pid (workers may write concurrently)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`temporary_path`)."""
    path = Path(path)
    with temporary_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """:func:`write_bytes` for UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    path = Path(path)
    with temporary_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new, renamed and removed files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
