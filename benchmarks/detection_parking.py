"""Parked channels (issue 17 item 1): memory and CPU of detection's live pattern, parking on and off.

    python3 benchmarks/detection_parking.py [--devices N] [--hours H] [--rounds R] [--park-after-s S]

What the detection worker does with a national fleet, in one process and without the broker or
the journal: the national template (``geowarn simulate --stations N``: sites of 5 devices,
GNSS e/n/u and a battery channel), every device reporting every 10 minutes at a phase of its
own, readings judged in arrival order by ``SiteFusion.update_all``, and every 5 s (of the
readings' time) the sites changed 60 s ago or more written as their saved rows
(``SiteFusion.site_row``, as ``service/detection.py``'s ``save_sites`` does with the default
``GEOWARN_SNAPSHOT_INTERVAL_S``). The first 24 hours fill the windows; the last ``--hours``
are timed (``--warm-h``).

The rows are written as the daemon writes them, into the tables of a real SQLite journal
(``Journal.save_site_states``, one transaction a save).

Each round runs three variants, each going first in turn, each in a fresh child process:
``spill`` (what the daemon does: ``park_after_s`` as given, the daemon's default 30 s, the
channels' texts saved apart from their sites' rows, in ``channel_state``, and the parked ones
kept there only, read back when needed: ``SiteFusion.site_rows``, ``spill``),
``park`` (parked, the texts kept in memory) and ``never`` (no parking, as before). Reported per variant, median over rounds: CPU µs per reading judging (``update_all``)
and saving (``site_row``), their sum, and, from one more child of each under ``tracemalloc``
(``--no-memory`` skips it), the bytes the fusion holds per channel at the end and how many
channels are live then. CPU time, not wall time: the machine's other tenants are not counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import subprocess
import sys
import time
import tomllib
from typing import Any

PER_SITE = 5
STEP = 600.0
SAVE_AFTER_S = 60.0  # the daemon's GEOWARN_SNAPSHOT_INTERVAL_S
SAVE_EVERY_S = 5.0
SYNC = "full"  # the detection worker's journal (service/detection.py: Journal's default)
WARM_H = 24.0


def _child(devices: int, hours: float, park: float | None, memory: bool, warm_h: float = WARM_H, spill: bool = False,
           save_after_s: float = SAVE_AFTER_S) -> dict[str, Any]:
    import tempfile

    from geowarn.config.registry import parse_registry
    from geowarn.detectors.fusion import _SPILLED, SiteFusion
    from geowarn.ingest.journal import Journal
    from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

    reg = parse_registry(tomllib.loads(sites_toml(synthetic_sites(Template(devices_per_site=PER_SITE, admin="420527"), devices))), "<fleet>")
    devs = {key: list(chans.values()) for key, chans in reg.channels.items()}
    rng = random.Random(1)
    phase = {key: rng.uniform(0.0, STEP) for key in devs}
    t0 = 1.7e9
    steps_warm, steps = int(warm_h * 3600 / STEP), int(hours * 3600 / STEP)
    f = SiteFusion(reg)
    f.park_after_s = park
    # The rows go where the daemon writes them: the journal's site_state table, a real SQLite
    # file (its page cache is SQLite's, outside tracemalloc), in one transaction a save.
    tmp = tempfile.TemporaryDirectory()
    journal = Journal(f"{tmp.name}/journal.sqlite", sync=SYNC)
    if spill:
        f.text_source = journal.channel_text
        f.eager = True  # at the journal's head: parked as judged (service/detection.py's step)
    if memory:
        import tracemalloc

        tracemalloc.start()
    judge = save = 0.0
    readings = 0
    dirty: dict[str, float] = {}
    next_save = -1.0
    for k in range(steps_warm + steps):
        timed = k >= steps_warm
        for t, key in sorted((t0 + STEP * k + phase[key], key) for key in devs):
            if t >= next_save:
                a = time.process_time()
                rows, texts = [], []
                for site, since in list(dirty.items()):
                    if t - since < save_after_s:
                        break  # oldest first
                    if spill:  # as service/detection.py's save_sites
                        row, packed = f.site_rows(site)
                        texts.extend((site, key, text) for key, text in packed)
                    else:
                        row = f.site_row(site)
                    rows.append((site, 0, 0, row))
                    del dirty[site]
                if rows:
                    journal.save_site_states(rows, channels=texts)
                    f.spill(site for site, *_ in rows)
                if timed:
                    save += time.process_time() - a
                next_save = t + SAVE_EVERY_S
            a = time.process_time()
            for info in devs[key]:
                v = 12.6 + rng.gauss(0.0, 0.01) if info.channel == "battery" else rng.gauss(0.0, 0.5)
                f.update_all(info, t, round(v, 2), False, t + 0.5)
            f.park_judged()  # a message, a batch
            if timed:
                judge += time.process_time() - a
                readings += len(devs[key])
            dirty.setdefault(key[0], t)
    out: dict[str, Any] = {"readings": readings, "judge_us": judge / readings * 1e6, "save_us": save / readings * 1e6}
    chans = [c for st in f._sites.values() for c in st.channels.values()]
    out["channels"], out["live"] = len(chans), sum(c.text is None for c in chans)
    out["spilled"] = sum(c.text is _SPILLED for c in chans)
    if memory:
        from geowarn.detectors import compact

        compact._ZIPPED.clear()  # the packer's bounded cache (~150 KB at most), not per channel
        gc.collect()
        out["bytes_per_channel"] = tracemalloc.get_traced_memory()[0] / len(chans)
    journal.conn.close()
    tmp.cleanup()
    return out


def _run(args: argparse.Namespace, park: float | None, memory: bool, spill: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--devices", str(args.devices), "--hours", str(args.hours), "--warm-h", str(args.warm_h),
           "--park-after-s", "never" if park is None else str(park), "--save-after-s", str(args.save_after_s)] + (["--memory"] if memory else []) + (["--spill"] if spill else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=1.0, help="timed hours after the 24 h that fill the windows")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm-h", type=float, default=WARM_H, help="hours of readings before the timed ones (they fill the windows)")
    ap.add_argument("--park-after-s", default="30")
    ap.add_argument("--save-after-s", type=float, default=SAVE_AFTER_S,
                    help="sites are saved once changed this long (the daemon's GEOWARN_SNAPSHOT_INTERVAL_S, default 60)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", type=str, default=None, help="write every round's figures and the memory runs here")
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spill", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    park = None if args.park_after_s == "never" else float(args.park_after_s)
    if args.child:
        print(json.dumps(_child(args.devices, args.hours, park, args.memory, args.warm_h, args.spill, args.save_after_s)))
        return 0
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; {args.devices} devices, "
          f"{args.warm_h:g} h to fill the windows, {args.hours:g} h timed, {args.rounds} rounds, saved {args.save_after_s:g} s after a change", flush=True)
    variants = {"spill": (park, True), "park": (park, False), "never": (None, False)}
    res: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants)[r % 3:] + list(variants)[:r % 3]  # each goes first in turn
        for name in order:
            p, spill = variants[name]
            res[name].append(_run(args, p, False, spill))
            x = res[name][-1]
            print(f"  round {r + 1} {name:5}: judge {x['judge_us']:.0f} + save {x['save_us']:.0f} = {x['judge_us'] + x['save_us']:.0f} µs a reading", flush=True)
    mem = {} if args.no_memory else {name: _run(args, p, True, spill) for name, (p, spill) in variants.items()}
    print("\n| variant | judge µs/reading | save µs/reading | total | bytes/channel (tracemalloc) | live channels at the end |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        j = statistics.median(x["judge_us"] for x in res[name])
        s = statistics.median(x["save_us"] for x in res[name])
        tot = statistics.median(x["judge_us"] + x["save_us"] for x in res[name])
        m = mem.get(name, {})
        label = "never park" if name == "never" or park is None else f"park after {park:g} s" + (", spilled (texts saved apart)" if name == "spill" else ", texts in memory")
        print(f"| {label} | {j:.0f} | {s:.0f} | {tot:.0f} | {m.get('bytes_per_channel', float('nan')):,.0f} | {m.get('live', '–')} of {m.get('channels', '–')} |")
    base = [b["judge_us"] + b["save_us"] for b in res["never"]]
    for name in ("spill", "park"):
        ratio = [a["judge_us"] + a["save_us"] for a in res[name]]
        print(f"CPU {name} / never, per round: {', '.join(f'{a / b:.2f}' for a, b in zip(ratio, base))}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"devices": args.devices, "hours": args.hours, "park_after_s": park, "rounds": res, "memory": mem}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
