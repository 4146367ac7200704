"""Writing files so that readers see the old one or the whole new one, never half of it.

Every writer of b2b goes through here: a file is written under a temporary name in the same folder,
flushed to disk, and renamed over its final name; a failed write removes the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def temporary_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed to ``path`` (after an fsync) when the block
    ends normally, removed when it raises. The temporary name is hidden, never ends like a final file
    (``.train-00001.tar.tmp-<pid>``) and holds the pid (workers may write concurrently)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
    """``torch.save`` to ``path`` atomically. A full disk raises OSError(ENOSPC), as any other write."""
    import torch

    path = Path(path)
    with temporary_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            # torch's zip writer reports a failed write as "unexpected pos ..." with no errno.
            if shutil.disk_usage(tmp.parent).free < 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from exc
            raise
    return path


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (read in blocks), to check a file against a recorded digest."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new, renamed and removed files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
