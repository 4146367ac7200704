"""The output folder of ``b2b shards build``: what a build may write there and what it may remove.

A build writes into ``--output`` only when it is new, empty, or holds b2b shards (a manifest) or an
interrupted build (its scratch folder, ``.b2b-build/``); and removes only what it wrote (see
:class:`OutputFolder`). So ``--output .`` in a home folder is refused, and a user's files beside the
shards survive every rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from b2b.atomic import write_text
from b2b.data.manifest import MANIFEST
from b2b.errors import DataError, some_names


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe_change(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


SCRATCH = ".b2b-build"  # the build's own folder inside --output: its lock, journal and song cache


def _owned_or_refused(out: Path) -> None:
    """Refuse an ``out`` that holds files but neither b2b shards (a manifest) nor an interrupted build (its
    scratch folder): a build writes there and, on a rebuild, removes the shards it wrote."""
    if not out.is_dir() or (out / SCRATCH).is_dir():
        return
    manifest = _read_json(out / MANIFEST)
    if isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("b2b-shards"):
        return
    names = sorted(p.name for p in out.iterdir())
    if names:
        raise DataError(
            f"--output {str(out)!r} holds files that are not b2b shards ({some_names(names)}); give a new "
            "or empty folder for the shards"
        )


class OutputFolder:
    """The output folder: its lock, the shards of a previous build, and clean-up after success.

    Nothing here removes a file b2b did not write: the scratch (lock, journal, song cache) lives in
    ``SCRATCH``; the journal names every shard before it is written; clean-up removes only shards named
    by the journal or the previous manifest that the new manifest does not list, their temporaries, and
    the scratch folder.
    """

    def __init__(self, out: Path):
        self.out, self.scratch, self.manifest_path = out, out / SCRATCH, out / MANIFEST
        _owned_or_refused(out)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.scratch / "lock", "w")  # held (and flock-ed) for the whole build
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DataError(
                f"another `b2b shards build` is writing to {str(out)!r}; wait for it to finish"
            ) from None
        self.cache = self.scratch / "cache"
        self.cache.mkdir(exist_ok=True)
        self._journal = self.scratch / "journal"
        self.written = set(self._journal.read_text().split()) if self._journal.is_file() else set()
        old = _read_json(self.manifest_path)
        self._previous = {r["name"] for r in old.get("shards", [])} if isinstance(old, dict) else set()

    def _record(self, names: set[str]) -> None:
        """Add ``names`` to the journal, on disk before any of them is written."""
        new = sorted(names - self.written)
        if new:
            with open(self._journal, "a") as journal:
                journal.write("".join(f"{name}\n" for name in new))
                journal.flush()
                os.fsync(journal.fileno())
            self.written.update(new)

    def check_previous(self, params: dict, source: dict, overwrite: bool) -> None:
        """Refuse to mix with shards of other options (unless ``overwrite``: then drop their manifest)."""
        old = _read_json(self.manifest_path) if self.manifest_path.exists() else None
        if old is not None:
            old_head = {
                **old.get("params", {}),
                "source": old.get("source", {}).get("kind"),
                "input": old.get("source", {}).get("input"),
            }
            new_head = {**params, "source": source["kind"], "input": source["input"]}
            if old_head != new_head:
                if not overwrite:
                    raise DataError(
                        f"{str(self.out)!r} already holds shards built with other options "
                        f"({_describe_change(old_head, new_head)}); pass --overwrite to replace them, "
                        f"or choose another --output"
                    )

    def before_write(self, path: Path) -> None:
        """Journal the shard ``path``, then remove the manifest before the first tar is written, so no
        reader sees old and new mixed (a rerun that finds every shard complete writes none and keeps it)."""
        self._record(self._previous | {path.name})  # the manifest that named the old ones goes next
        if self.manifest_path.exists():
            self.manifest_path.unlink()

    def finish(self, manifest: dict) -> None:
        """Write the manifest (if it changed), then remove what this build no longer needs: the shards
        it or the previous build wrote that the manifest does not list, their temporaries, the cache."""
        text = json.dumps(manifest, indent=1) + "\n"
        if not (self.manifest_path.is_file() and self.manifest_path.read_text() == text):
            write_text(self.manifest_path, text)
        listed = {s["name"] for s in manifest["shards"]}
        for name in (self.written | self._previous) - listed:
            (self.out / name).unlink(missing_ok=True)
        ours = self.written | listed | {MANIFEST}
        for path in self.out.glob(".*.tmp-*"):
            if path.name[1:].rsplit(".tmp-", 1)[0] in ours:
                path.unlink()
        shutil.rmtree(self.cache, ignore_errors=True)
        self._journal.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock; the scratch folder goes once nothing in it is left to resume from."""
        self._lock.close()
        (self.scratch / "lock").unlink(missing_ok=True)
        for folder in (self.cache, self.scratch):
            with contextlib.suppress(OSError):  # not empty: the cache and journal of an interrupted build
                folder.rmdir()
