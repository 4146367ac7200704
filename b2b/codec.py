"""How one binary piano-roll sample is stored inside a shard.

A sample is packed to bits (8 steps per byte) and deflated: piano rolls are sparse (a few percent of
cells are on), so this is far smaller than the dense array and decodes in microseconds.
"""

from __future__ import annotations

import zlib

import numpy as np

ENCODING = "packbits+zlib"
SUFFIX = "roll"  # the member suffix inside a tar: <key>.roll


def encode_roll(roll: np.ndarray) -> bytes:
    """Pack a boolean array of any shape into bytes (shape is stored in the manifest, not here)."""
    return zlib.compress(np.packbits(np.asarray(roll, dtype=bool), axis=None).tobytes(), 6)


def decode_roll(data: bytes, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Inverse of :func:`encode_roll`: a boolean array of ``shape``.

    Raises ValueError when ``data`` is not a packed roll of that shape.
    """
    count = int(np.prod(shape))
    try:
        packed = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    except zlib.error as exc:
        raise ValueError(f"not a {ENCODING} roll: {exc}") from None
    if packed.size != (count + 7) // 8:
        raise ValueError(f"packed roll holds {packed.size} bytes, a roll of shape {tuple(shape)} needs {(count + 7) // 8}")
    return np.unpackbits(packed, count=count).reshape(shape).view(bool)
