"""Cheaper detector state saving and restoring (issue 17, save/restore cost).

``detectors/compact.py`` offers a short array to zlib only when deflate can shorten it and
reads packed strings without numpy; neither may change a single double, and every string the
earlier encoder wrote (zlib level 9 on every array, read back through numpy) must still read
back the same. The reference encoder and reader below are written out from the standard
library and numpy, independently of the module under test.
"""

from __future__ import annotations

import base64
import math
import random
import struct
import zlib
from array import array

import numpy as np
import pytest
from geowarn.detectors.compact import pack, pack_times, unpack


def _bits(xs: list[float]) -> list[bytes]:
    return [struct.pack("<d", x) for x in xs]


def _old_encode(kind: str, a: np.ndarray) -> str:
    """What compact.py wrote before issue 17: every array through zlib level 9, kept if shorter."""
    raw = a.astype("<f8").tobytes()
    packed = zlib.compress(raw, 9)
    if len(packed) < len(raw):
        return kind + "z" + base64.b64encode(packed).decode("ascii")
    return kind + "r" + base64.b64encode(raw).decode("ascii")


@np.errstate(invalid="ignore")  # inf - inf: not round-tripping, so whole, as before
def _old_pack_times(ts: list[float]) -> str:
    a = np.asarray(ts, dtype=np.float64)
    if len(a) > 1:
        d = np.concatenate((a[:1], np.diff(a)))
        if np.array_equal(np.cumsum(d), a):
            return _old_encode("d", d)
    return _old_encode("r", a)


def _old_unpack(s: str) -> list[float]:
    data = base64.b64decode(s[2:])
    if s[1] == "z":
        data = zlib.decompress(data)
    a = np.frombuffer(data, dtype="<f8")
    if s[0] == "d":
        a = np.cumsum(a)
    return [float(x) for x in a.tolist()]


def _series() -> list[list[float]]:
    """Arrays like those a snapshot packs: noise around 0 and around a level, sums, times
    (regular, irregular, with a gap), repeats, zeros, quantised values, and the awkward doubles."""
    rng = random.Random(17)
    out: list[list[float]] = [[], [0.0], [-0.0, 0.0], [math.inf, -math.inf, 1.0], [5e-324, 1.7976931348623157e308, -2.2250738585072014e-308]]
    for n in (1, 2, 3, 5, 8, 9, 14, 16, 17, 40, 73, 300):
        out.append([rng.gauss(0, 2) for _ in range(n)])
        out.append([12.5 + rng.gauss(0, 0.01) for _ in range(n)])
        out.append([1.8e9 + 600.0 * i for i in range(n)])
        out.append([1.8e9 + 60.0 * i + (86400.0 if i > n // 2 else 0.0) for i in range(n)])
        out.append(sorted(1.8e9 + rng.random() * 1e5 for _ in range(n)))
        out.append([float(rng.randrange(3)) for _ in range(n)])
        out.append([round(rng.gauss(0, 2), 1) for _ in range(n)])  # quantised readings (0.1 steps)
        out.append([0.0] * n)
    return out


@pytest.mark.parametrize("packer", [pack, pack_times])
def test_every_double_comes_back_bit_for_bit(packer) -> None:  # type: ignore[no-untyped-def]
    for xs in _series():
        got = unpack(packer(xs))
        assert _bits(got) == _bits(xs), xs[:4]
        assert all(type(x) is float for x in got)


def test_strings_the_earlier_encoder_wrote_still_read_the_same() -> None:
    # Saved state on users' disks: old strings read by the new reader, new strings by the old one.
    for xs in _series():
        for old, new in ((_old_encode("r", np.asarray(xs, dtype=np.float64)), pack(xs)), (_old_pack_times(xs), pack_times(xs))):
            assert _bits(unpack(old)) == _bits(_old_unpack(old)), xs[:4]
            assert _bits(_old_unpack(new)) == _bits(unpack(new)), xs[:4]
            assert new[0] == old[0]  # times go in as differences exactly when they did before


def test_differences_add_up_as_numpy_cumsum_did() -> None:
    # The reader adds the differences left to right in Python: the same doubles as np.cumsum.
    rng = np.random.default_rng(3)
    for n in (2, 7, 100, 5000):
        d = np.concatenate(([1.7e9], rng.exponential(600.0, n - 1)))
        s = "dr" + base64.b64encode(d.astype("<f8").tobytes()).decode("ascii")
        assert _bits(unpack(s)) == _bits(np.cumsum(d).tolist())


def test_what_compresses_still_compresses() -> None:
    # Regular times, repeated values, zeros and readings near one value shrink as before;
    # only arrays deflate cannot shorten (short noise) skip the call, and stay raw.
    rng = random.Random(5)
    for xs in _series():
        old, new = _old_encode("r", np.asarray(xs, dtype=np.float64)), pack(xs)
        assert len(new) <= len(old) + 4, (xs[:4], old[:2], new[:2])
        assert len(pack_times(xs)) <= len(_old_pack_times(xs)) + 4, xs[:4]
    noise = [rng.gauss(0, 2) for _ in range(14)]
    assert pack(noise) == _old_encode("r", np.asarray(noise)) and pack(noise)[:2] == "rr"
    regular = [1.8e9 + 600.0 * i for i in range(14)]
    assert pack_times(regular) == _old_pack_times(regular) and pack_times(regular)[:2] == "dz"


def test_inputs_other_than_a_list_of_floats_convert_as_before() -> None:
    cases: list[object] = [
        array("d", [1.0, 2.5, -3.0]),
        np.arange(6, dtype=np.float32) / 3,
        (1, 2, 3),
        [True, 2, np.float64(0.1)],
        [None, 1.0],  # numpy's conversion: nan
    ]
    for xs in cases:
        want = np.asarray(xs, dtype=np.float64).tolist()
        got = unpack(pack(xs))  # type: ignore[arg-type]
        assert [struct.pack("<d", x) for x in got] == [struct.pack("<d", x) for x in want], xs


@pytest.mark.parametrize("bad", ["", "x", "qz", "rrAAA", "rrAAAAAAAAAAAA==", "dz" + base64.b64encode(b"not zlib").decode(), "rré"])
def test_a_damaged_string_is_a_clear_value_error(bad: str) -> None:
    # The restore path reports a ValueError as an unreadable part and starts that part afresh
    # (a zlib.error escaped it before).
    with pytest.raises(ValueError):
        unpack(bad)


def test_a_latch_found_by_its_thresholds_tuple_gets_exactly_its_own_thresholds() -> None:
    from geowarn.detectors.latch import LevelLatch

    mine = ((2, 10.0), (4, 20.0))
    a, b = LevelLatch(mine, 0.1, 60.0), LevelLatch(mine, 0.1, 60.0)
    assert a.thresholds == mine and b._bands is a._bands
    # Equal but not the same: ints where floats were, -0.0 where 0.0 was; a list changed in place.
    ints = LevelLatch(((2, 10), (4, 20)))
    assert [type(t) for _, t in ints.thresholds] == [int, int]
    zeros = LevelLatch(((1, -0.0), (2, 5.0)))
    assert math.copysign(1.0, zeros.thresholds[0][1]) == -1.0
    moving = [(2, 10.0), (4, 20.0)]
    LevelLatch(moving)
    moving[1] = (4, 30.0)
    assert LevelLatch(moving).thresholds == ((2, 10.0), (4, 30.0))
    # And they latch as before: up at once, down after the hold.
    assert [a.update(t, x) for t, x in ((0, 25.0), (10, 19.0), (30, 17.0), (91, 17.0))] == [4, 4, 4, 2]


def test_restored_detectors_latch_on_the_levels_they_were_given() -> None:
    from geowarn.detectors.slope import SlopeWindows
    from geowarn.detectors.tangent import TangentAngleDetector
    from geowarn.detectors.velocity import VelocityDetector

    for levels in ([(2, 10.0), (3, 72.0), (4, 120.0)], [(2, 10), (3, 72), (4, 120)]):
        v = VelocityDetector(levels, window_s=6 * 3600.0, hold_s=1200.0, windows=SlopeWindows())
        w = VelocityDetector(levels, window_s=6 * 3600.0, hold_s=1200.0, windows=SlopeWindows())
        w.restore(v.snapshot())
        for d in (v, w):
            assert [(lvl, repr(t)) for lvl, t in d._latch.thresholds] == [(lvl, repr(t)) for lvl, t in levels]
    t = TangentAngleDetector.for_channel(window_s=6 * 3600.0, interval_s=600.0, windows=SlopeWindows())
    assert t._latch.thresholds == t.thresholds_deg


def test_a_sites_saved_state_holds_its_own_held_readings_in_order_and_restores_the_same() -> None:
    # site_state no longer sorts the whole fleet's held readings for each site: it picks the
    # site's own and sorts those. Same rows, same order, and the sites' parts put together
    # restore the same readings in the same order (what a restart reads).
    import json

    from geowarn.config.registry import parse_registry
    from geowarn.detectors.fusion import SiteFusion

    sites = [
        {"site": s, "name": s, "admin": "420527", "lat": 30.0, "lon": 110.0,
         "devices": [{"device": f"{s}-G{i}", "channels": [{"channel": "e", "kind": "gnss_e"}]} for i in (1, 2)]}
        for s in ("A", "B", "C")
    ]  # fmt: skip
    reg = parse_registry({"sites": sites}, "<test>")
    f = SiteFusion(reg)
    t0 = 1.7e9
    rng = random.Random(9)
    expected: dict[str, list[list[object]]] = {"A": [], "B": [], "C": []}
    for k in range(60):
        s = "ABC"[rng.randrange(3)]
        dev = f"{s}-G{1 + rng.randrange(2)}"
        t = t0 + 600.0 + rng.randrange(20) * 5.0  # stamped ahead of its arrival: held
        v = rng.gauss(0, 2)
        f.update_all(reg.channel(s, dev, "e"), t, v, arrived=t0 + k)
        expected[s].append([s, 0, dev, "e", t, v, t0 + k])
    for s, rows in expected.items():
        rows.sort(key=lambda r: r[4])  # by time, ties in arrival order (a stable sort)
        assert f.site_state(s)["held"] == rows
    g = SiteFusion(reg)
    g.restore(json.loads(json.dumps(SiteFusion.assemble(f.globals_state(), (f.site_state(s) for s in "ABC")))))
    for s in "ABC":  # each site's in its order (ties across sites: in the order the parts come)
        assert [(t, info.device, v) for t, _, info, v, *_ in sorted(g._held) if info.site == s] == [
            (t, info.device, v) for t, _, info, v, *_ in sorted(f._held) if info.site == s
        ]


def test_windows_restore_into_their_arrays_the_doubles_of_old_and_new_strings() -> None:
    from geowarn.detectors.compact import unpack_into

    for xs in _series():
        for s in (pack(xs), pack_times(xs), _old_encode("r", np.asarray(xs, dtype=np.float64)), _old_pack_times(xs)):
            a = array("d", [7.0])
            unpack_into(a, s)
            assert a.tobytes() == struct.pack(f"<{len(xs) + 1}d", 7.0, *_old_unpack(s)), xs[:4]
    a = array("d", [7.0])
    with pytest.raises(ValueError):
        unpack_into(a, "rrAAAAAAAAAAAA==")
    assert a.tolist() == [7.0]  # a damaged string adds nothing
