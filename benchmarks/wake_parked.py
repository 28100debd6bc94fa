"""CPU to wake a parked channel and build its bank: what every channel of the fleet costs once in a burst.

    python3 benchmarks/wake_parked.py [--sites N] [--days D] [--rounds R] [--baseline DIR] [--profile KIND]

A parked channel (``SiteFusion.park_after_s``, issue 17 item 1) keeps its levels, verdicts,
quality guard and detectors only as the compressed JSON of its saved row; its next reading
unparks it: ``SiteFusion._wake`` (inflate, parse, check the levels and verdicts), then
``SiteFusion._unpack`` (build the guard and detectors from the saved parts). In a burst every
channel of the fleet is woken once, so this is paid per channel on top of judging the reading.

Sites of 5 devices, each device with one channel of each kind in ``KINDS`` (the national
template's GNSS component and battery, and an extensometer, a rain gauge and a piezometer),
fed ``--days`` of 10-minute readings (as ``benchmarks/detectors_cost.py`` makes them), then
every site's row written with ``park_after_s = 0`` (every channel parked). Timed: waking and
unpacking every channel, CPU time (``time.process_time``), per kind; each round parks them
again from the very same text. Median over rounds, µs per channel.

``--baseline DIR``: another checkout (e.g. ``git worktree add /tmp/old HEAD``) measured side
by side: each round runs one child process per tree, alternating which goes first, so both
see the same machine load. ``--profile KIND``: cProfile of waking that kind's channels, this
tree only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEP = 600.0
T0 = 1.7e9
#: kind -> (unit, series maker): as benchmarks/detectors_cost.py's, with the battery added.
KINDS = ("gnss_e", "displacement", "rain", "pore_pressure", "battery")
UNITS = {"gnss_e": "mm", "displacement": "mm", "rain": "mm", "pore_pressure": "kPa", "battery": "V"}


def _series(kind: str, n: int, seed: int) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "gnss_e":
        v = rng.normal(0, 3.0, n)
    elif kind == "displacement":
        v = np.cumsum(np.full(n, 0.01)) + rng.normal(0, 0.1, n)
    elif kind == "rain":
        v = np.where(rng.random(n) < 0.05, np.round(rng.exponential(1.0, n) / 0.2) * 0.2, 0.0)
    elif kind == "pore_pressure":
        v = 120 + np.cumsum(rng.normal(0, 0.05, n))
    else:
        v = 12.6 + rng.normal(0, 0.01, n)
    return [round(float(x), 3) for x in v]


def _registry(sites: int) -> Any:
    import tomllib

    from geowarn.config.registry import parse_registry
    from geowarn.simulators.scenario import (
        Template,
        TemplateChannel,
        sites_toml,
        synthetic_sites,
    )

    template = Template(devices_per_site=5, admin="420527", channels=[TemplateChannel(channel=k, kind=k, unit=UNITS[k]) for k in KINDS])
    return parse_registry(tomllib.loads(sites_toml(synthetic_sites(template, sites * 5))), "<fleet>")


def _rows(sites: int, days: float) -> dict[str, Any]:
    """A fusion fed ``days`` of readings, then every site's row written with every channel
    parked: {"globals": ..., "rows": [row text, ...]}, what a restart reads."""
    from geowarn.detectors.fusion import SiteFusion

    reg = _registry(sites)
    f = SiteFusion(reg)
    n = int(days * 86400 / STEP)
    infos = [info for chans in reg.channels.values() for info in chans.values()]
    series = {(info.device, info.channel): _series(info.channel, n, i) for i, info in enumerate(infos)}
    for k in range(n):
        t = T0 + STEP * k
        for info in infos:
            f.update_all(info, t + 1.0, series[(info.device, info.channel)][k], False, t + 2.0)
    f.park_after_s = 0.0
    return {"globals": f.globals_state(), "rows": [f.site_row(site) for site in reg.sites]}


def _fleet(sites: int, rows: dict[str, Any]) -> tuple[Any, dict[str, list[tuple[Any, Any, bytes]]]]:
    """A fusion restored from ``rows`` (every channel parked, as saved): (fusion, kind ->
    [(fusion's _park, channel, its text)])."""
    from geowarn.detectors import fusion as fusion_mod

    f = fusion_mod.SiteFusion(_registry(sites))
    f.restore(fusion_mod.SiteFusion.assemble(rows["globals"], [json.loads(r) for r in rows["rows"]]))
    out: dict[str, list[tuple[Any, Any, bytes]]] = {k: [] for k in KINDS}
    for st in f._sites.values():
        for ch in st.channels.values():
            assert ch.text is not None, "every channel parked"
            out[str(getattr(ch.info.kind, "value", ch.info.kind))].append((fusion_mod._park, ch, ch.text))
    return f, out


def _time(f: Any, chans: list[tuple[Any, Any, bytes]]) -> float:
    for park, ch, text in chans:
        park(ch, text)
    wake, unpack = f._wake, f._unpack
    a = time.process_time()
    for _, ch, _ in chans:
        wake(ch)
        unpack(ch)
    return (time.process_time() - a) / len(chans) * 1e6


def _child(sites: int, rows_path: str, reps: int) -> dict[str, float]:
    import gc

    with open(rows_path, encoding="utf-8") as fh:
        f, by_kind = _fleet(sites, json.load(fh))
    gc.collect()
    gc.freeze()  # the fleet's objects: a collection in the timed loop would walk them all
    res: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(reps):
        for k in KINDS:
            res[k].append(_time(f, by_kind[k]))
    assert not f.unreadable, f.unreadable[:3]
    return {k: min(v) for k, v in res.items()}


def _run(root: str, sites: int, rows_path: str, reps: int) -> dict[str, float]:
    """One child round of the checkout at ``root``, imported as ``geowarn`` ahead of the installed one."""
    with tempfile.TemporaryDirectory() as d:
        os.symlink(Path(root).resolve(), Path(d) / "geowarn")
        env = {**os.environ, "PYTHONPATH": d}
        cmd = [sys.executable, "-c", f"import json, runpy; m = runpy.run_path({__file__!r}); print(json.dumps(m['_child']({sites}, {rows_path!r}, {reps})))"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=d).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sites", type=int, default=20, help="sites of 5 devices, a channel of each kind per device")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="wakes of the whole fleet per child (the fastest counts)")
    ap.add_argument("--baseline", metavar="DIR")
    ap.add_argument("--profile", metavar="KIND")
    ap.add_argument("--sort", default="tottime", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile:
        import cProfile
        import pstats

        f, by_kind = _fleet(args.sites, _rows(args.sites, args.days))
        chans = by_kind[args.profile]
        pr = cProfile.Profile()
        for _ in range(args.reps):
            for park, ch, text in chans:
                park(ch, text)
            pr.enable()
            for _, ch, _ in chans:
                f._wake(ch)
                f._unpack(ch)
            pr.disable()
        pstats.Stats(pr).sort_stats(args.sort).print_stats(45)
        return 0
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; {args.sites} sites x 5 devices, "
          f"a channel of each kind a device, {args.days:g} days of 10-minute readings; {args.rounds} rounds, best of {args.reps} a round", flush=True)
    rows_path = os.path.join(tempfile.mkdtemp(), "rows.json")
    with open(rows_path, "w", encoding="utf-8") as fh:
        json.dump(_rows(args.sites, args.days), fh)  # the same saved rows for both trees: their texts are the same
    trees = [("this", str(ROOT))] + ([("base", args.baseline)] if args.baseline else [])
    res: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, root in trees if r % 2 == 0 else trees[::-1]:
            res[name].append(_run(root, args.sites, rows_path, args.reps))
            print(f"  round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in res[name][-1].items()), flush=True)
    if args.baseline:
        print("\n| kind | baseline µs/channel | this tree µs/channel | ratio (this/base, median of rounds) |\n|---|---:|---:|---:|")
        for k in KINDS:
            b = statistics.median(x[k] for x in res["base"])
            m = statistics.median(x[k] for x in res["this"])
            ratio = statistics.median(x[k] / y[k] for x, y in zip(res["this"], res["base"]))
            print(f"| {k} | {b:.1f} | {m:.1f} | {ratio:.2f} |")
    else:
        print("\n| kind | µs/channel |\n|---|---:|")
        for k in KINDS:
            print(f"| {k} | {statistics.median(x[k] for x in res['this']):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
