"""A shards folder's ``manifest.json``: what the shards hold (shape, spec, splits, files) and how they
were built.

``b2b shards build`` writes it last, so its presence marks a finished build; everything that reads shards
reads it first, through :func:`read_manifest`.
"""

from __future__ import annotations

import json
from pathlib import Path

from b2b.errors import DataError


def read_manifest(shards: str | Path) -> dict:
    """Read ``<shards>/manifest.json`` or raise a DataError that says how to build it."""
    path = Path(shards) / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"no shards at {str(shards)!r}: {path} does not exist. Build them with "
            f"`b2b shards build --source demo --output {shards}` (or --source lpd/midi --input DIR)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rebuild the shards") from None
