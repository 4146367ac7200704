"""How one binary piano-roll sample is stored inside a shard.

A sample is packed to bits (8 cells per byte) and deflated: piano rolls are sparse (a few percent of
cells are on), so this is far smaller than the dense array and decodes in microseconds. Decoding has two
halves, :func:`inflate_roll` (bytes to packed bits) and :func:`unpack_rolls` (packed bits to bools), so
the loader's workers can ship batches still packed (8× fewer bytes) and the training process unpacks a
whole batch in one call.
"""

from __future__ import annotations

import math
import types
import zlib
from collections.abc import Sequence

import numpy as np

_inflate: types.ModuleType  # zlib-ng's zlib or the stdlib's: the same calls and error class
try:  # zlib-ng inflates the same deflate streams about 3× faster than the stdlib's zlib
    from zlib_ng import zlib_ng as _inflate
except ImportError:  # pragma: no cover - optional speed-up
    _inflate = zlib

ENCODING = "packbits+zlib"
SUFFIX = "roll"  # the member suffix inside a tar: <key>.roll


def encode_roll(roll: np.ndarray) -> bytes:
    """Pack a boolean array of any shape into bytes (shape is stored in the manifest, not here)."""
    return zlib.compress(np.packbits(np.asarray(roll, dtype=bool), axis=None).tobytes(), 6)


def packed_size(shape: Sequence[int]) -> int:
    """Bytes of one bit-packed roll of ``shape`` (8 cells per byte, the last byte padded)."""
    return (math.prod(shape) + 7) // 8


def inflate_roll(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """The packed bits of one encoded roll, as uint8 of length ``packed_size(shape)``.

    Raises ValueError when ``data`` is not a packed roll of that shape.
    """
    size = packed_size(shape)
    try:
        packed = _inflate.decompress(data, bufsize=size)
    except (zlib.error, _inflate.error) as exc:
        raise ValueError(f"not a {ENCODING} stream: {exc}") from None
    if len(packed) != size:
        raise ValueError(f"{len(packed)} packed bytes, a roll of shape {list(shape)} needs {size}")
    return np.frombuffer(packed, dtype=np.uint8)


def unpack_rolls(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``(n, packed_size)`` uint8 to ``(n, *shape)`` bool, in one call."""
    cells = np.unpackbits(packed, axis=1, count=math.prod(shape))
    return cells.reshape(len(packed), *shape).view(bool)


def decode_roll(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_roll`: a boolean array of ``shape``. Raises ValueError on bad data."""
    return unpack_rolls(inflate_roll(data, shape)[None], shape)[0]
