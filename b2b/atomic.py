"""Writing files so that readers see the old one or the whole new one, never half of it.

Every writer of b2b goes through here: a file is written under a temporary name in the same folder,
flushed to disk, and renamed over its final name; a failed write removes the temporary file. The one
kind of file that is appended to instead, a log of JSON lines, is read with :func:`read_json_lines`,
which drops a line that a kill or a full disk cut off.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class JsonLines:
    """A JSON-lines log as read back: its whole records, and the lines that were not one."""

    lines: list[str]  # the records' lines, as written
    rows: list[dict]  # the same, parsed
    dropped: list[int]  # numbers (from 1) of the lines that are not a JSON object
    total: int  # lines in the file, blank ones included


def read_json_lines(path: str | Path) -> JsonLines:
    """Read an append-only log of one JSON object per line, dropping lines that are not one.

    An append cut off by a kill or a full disk leaves a partial last line, which no later append
    completes; such a line (or any other that does not parse as a JSON object) is dropped, and its
    number is returned so that the caller can say so.
    """
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    lines, rows, dropped = [], [], []
    numbered = list(enumerate(text.splitlines(), 1))
    for number, line in numbered:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            lines.append(line)
            rows.append(row)
        else:
            dropped.append(number)
    return JsonLines(lines, rows, dropped, len(numbered))


def cannot_write_in(folder: str | Path) -> str | None:
    """Why ``folder`` cannot take a new file (the OS's reason), or None when it can.

    It creates and removes a probe file: permission bits say nothing about a read-only mount, and
    nothing to root.
    """
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".b2b-probe-")
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(handle)
    os.unlink(probe)
    return None
