"""Compact, exact encodings of float sequences for detector snapshots.

A detector's snapshot must restore bit for bit (the contract suite compares later verdicts
for equality), so the floats go in whole: JSON would write each as its shortest repr, up to
~20 characters for a noisy GNSS value, while 8 bytes of IEEE double in base64 take 10.7.
Times of a regularly sampled channel go in as differences of consecutive times, which then
repeat and compress to almost nothing; a difference is used only where adding it back gives
the very same double (always, for nearby epoch seconds), else the times go in whole.

>>> xs = [1.7e9 + 600.0 * i for i in range(72)]
>>> s = pack_times(xs)
>>> len(s) < 40, unpack(s) == xs
(True, True)
>>> ys = [0.1, -2.5e-7, float("inf"), 3.0]
>>> unpack(pack(ys)) == ys, unpack(pack([])) == []
(True, True)

Compressing costs a few microseconds a call whatever the level (setting up a stream and its
tables), and a snapshot packs dozens of short arrays, most of them noise that never
compresses; so a short array is offered to zlib only when deflate has something to shorten
(time differences; a run of six zero bytes, as small integers, round and quantised numbers
have; two values alike in their top three bytes: sign, exponent and first mantissa bits, as
readings near one value are), which skips half the calls of a site's save and loses a byte
or two in rare cases (issue 17). An array packed again soon after (a channel packs some twice)
is compressed once (see ``_ZIPPED``). Either way ``unpack`` reads it, and it reads every string older code wrote.

>>> import base64, struct
>>> pack([0.25, -1.5]) == "rr" + base64.b64encode(struct.pack("<2d", 0.25, -1.5)).decode()
True
>>> pack([1.0, 1.0, 1.0, 1.0])[:2], pack([0.5, 4.0, 8.0])[:2], pack_times([5.0, 65.0, 125.0, 185.0])[:2]
('rz', 'rz', 'dz')
"""

from __future__ import annotations

import binascii
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate, pairwise

import numpy as np

_RAW, _ZIP, _DIFF = "r", "z", "d"
_LITTLE = sys.byteorder == "little"
#: Arrays longer than this are always offered to zlib (their exponent bytes alone may pay).
_SHORT = 16
_ZEROS = bytes(6)
#: Recently compressed short arrays (raw doubles -> what follows the kind; at most 512 of up to
#: 16 doubles, ~150 KB): a channel's snapshot packs some arrays twice (the tangent and forecast
#: references learn alike; a long and a short view are alike until the window fills) and a
#: fresh detector's empty ones again and again.
_ZIPPED: dict[bytes, str] = {}
_ZIPPED_MAX = 512


def _doubles(xs: Sequence[float] | np.ndarray) -> bytes:
    """``xs`` as little-endian doubles, converted as ``np.asarray(xs, dtype=np.float64)`` does."""
    if type(xs) is array and xs.typecode == "d" and _LITTLE:
        return xs.tobytes()
    if type(xs) is list or type(xs) is tuple:
        try:
            return struct.pack(f"<{len(xs)}d", *xs)
        except (struct.error, TypeError):  # not plain numbers: numpy's conversion, or its error
            pass
    return np.asarray(xs, dtype=np.float64).astype("<f8").tobytes()


def _encode(kind: str, raw: bytes) -> str:
    """``kind`` + how + base64 of ``raw``: compressed when that is shorter (see the module docstring)."""
    if not raw:
        return kind + _RAW
    n = len(raw) >> 3
    if n > _SHORT or (kind == _DIFF and n > 2) or _ZEROS in raw or len({q >> 40 for q in struct.unpack(f"<{n}Q", raw)}) < n:
        body = _ZIPPED.get(raw)
        if body is None:
            packed = zlib.compress(raw, 9)
            if len(packed) < len(raw):
                body = _ZIP + binascii.b2a_base64(packed, newline=False).decode("ascii")
            else:
                body = _RAW + binascii.b2a_base64(raw, newline=False).decode("ascii")
            if n <= _SHORT:  # long arrays (whole windows) seldom repeat: not kept
                if len(_ZIPPED) >= _ZIPPED_MAX:
                    _ZIPPED.clear()
                _ZIPPED[raw] = body
        return kind + body
    return kind + _RAW + binascii.b2a_base64(raw, newline=False).decode("ascii")


def _floats(raw: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(raw) // 8}d", raw)


def pack(xs: Sequence[float] | np.ndarray) -> str:
    """Floats as one string: base64 of little-endian doubles, zlib-compressed when that is shorter."""
    return _encode(_RAW, _doubles(xs))


def pack_times(ts: Sequence[float] | np.ndarray) -> str:
    """Increasing times: as differences when that round-trips exactly (it compresses), else whole."""
    raw = _doubles(ts)
    a = _floats(raw)
    if len(a) > 1:
        d = [a[0]]
        d += [y - x for x, y in pairwise(a)]
        if tuple(accumulate(d)) == a:  # adds left to right, exactly as unpack does
            return _encode(_DIFF, struct.pack(f"<{len(d)}d", *d))
    return _encode(_RAW, raw)


_EMPTY = frozenset((_RAW + _RAW, _DIFF + _RAW))  # what pack and pack_times write for no floats


def _decode(s: str) -> tuple[str, bytes]:
    """(kind, the doubles' bytes) of a packed string; ValueError for anything else."""
    kind, how = s[:1], s[1:2]
    if kind not in (_RAW, _DIFF) or how not in (_RAW, _ZIP):
        raise ValueError(f"not a packed float array (prefix {s[:2]!r})")
    if len(s) == 2:
        data = b""
    else:
        data = binascii.a2b_base64(s[2:])
    if how == _ZIP:
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:  # a ValueError, as every other damaged string: restore reports it
            raise ValueError(f"packed float array does not decompress: {exc}") from None
    if len(data) % 8:
        raise ValueError(f"packed float array of {len(data)} bytes, not a whole number of doubles")
    return kind, data


def unpack(s: str) -> list[float]:
    """The floats ``pack`` or ``pack_times`` encoded, as a list."""
    if s in _EMPTY:  # most forecasts' trend and history
        return []
    kind, data = _decode(s)
    xs = _floats(data)
    return list(accumulate(xs)) if kind == _DIFF else list(xs)


def unpack_into(out: array[float], s: str) -> None:
    """Append the floats ``pack`` or ``pack_times`` encoded to the ``array("d")`` ``out`` (as
    ``out.fromlist(unpack(s))``, without making a float object of each: a restart restores
    every channel's windows). ``out`` is unchanged when ``s`` is not a packed array.

    >>> a = array("d", [1.0])
    >>> unpack_into(a, pack([2.0, 3.5])); unpack_into(a, pack_times([10.0, 70.0, 130.0])); a.tolist()
    [1.0, 2.0, 3.5, 10.0, 70.0, 130.0]
    """
    kind, data = _decode(s)
    if kind == _DIFF:
        out.fromlist(list(accumulate(_floats(data))))
    elif _LITTLE:
        out.frombytes(data)
    else:
        out.fromlist(list(_floats(data)))
