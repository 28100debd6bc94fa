"""The site registry's load time and memory per device, and what each worker process receives.

    python3 benchmarks/registry_memory.py [--sizes 10000,50000,100000,250000]
                                          [--tree LABEL=PATH ... | --baseline-path PATH]
                                          [--shape simulate|national] [--runs N] [--what load,trace,...]
                                          [--markdown FILE] [--json FILE]

For each size a registry file of synthetic devices in the shape ``geowarn simulate --stations N``
writes (``simulators.scenario.synthetic_sites`` and ``sites_toml``: sites of 5 devices, 4
channels each; ``--shape national``: the file ``benchmarks/national_scale.py`` runs the daemon
on, its ``registry_text``, which adds ``--probes`` one-device probe sites) is written once, and each tree under test (``--tree``, repeatable; default: this
checkout) is measured on that same file, each figure in a fresh process so that one
measurement's garbage is not the next one's memory:

* ``load``: ``load_registry`` (what the daemon's start calls) timed, and the process's RSS growth after the load (what the registry keeps, with whatever the allocator
  kept of the TOML document and the validation's garbage) and its peak growth (VmHWM).
* ``split``: where the time goes, in a process of its own: the TOML parse (``read_toml``), then
  validation and building the lookups (``parse_registry``).
* ``trace``: the same load under ``tracemalloc``: the bytes the registry keeps and the peak
  during the load, per device.
* ``worker``: how the registry reaches a daemon worker. Workers are spawned
  (``service/worker.py`` ``WorkerProcess``: paho threads and fork do not mix) and receive the
  daemon's ``Loaded`` as a pickled argument, so the registry is pickled once per worker start:
  its pickled size per device and the time to pickle it, and a spawned process given the
  registry as its argument exactly as ``WorkerProcess`` gives it: from ``start()`` to the
  process having it (a pipe says so), and that process's RSS, both less the same for a process
  given nothing. A daemon has two such workers (store, detection) besides its main process.

Compare trees side by side with a second checkout of an older commit, e.g.
``git worktree add /tmp/regbase REV`` then ``--tree before=/tmp/regbase --tree after=.``
(``--baseline-path /tmp/regbase`` says the same): each tree is imported as ``geowarn`` from a
folder holding only a ``geowarn`` link to it, so the installed package does not matter.
``--runs N`` measures every figure N times, each in a fresh process, the trees taking turns,
and reports the medians. Results are in ``BENCHMARKS.md``.
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
PER_SITE = 5


def _status_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in kB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a peak is this load's alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# -- child: one measurement in a fresh process --------------------------------------------


def _child_load(path: str) -> dict[str, Any]:
    import gc

    from geowarn.config.registry import load_registry

    gc.collect()
    rss0 = _status_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    reg = load_registry(path)  # what the daemon's start calls (config.settings.load_all)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss1 = _status_kb("VmRSS")
    peak = _status_kb("VmHWM")
    return {"devices": len(reg.device_site), "load_s": load_s, "rss_kept_b": (rss1 - rss0) * 1024, "rss_peak_b": (peak - rss0) * 1024}


def _child_split(path: str) -> dict[str, Any]:
    """Where the load's time goes: the TOML parse, then validation and building the lookups."""
    from geowarn.config.registry import parse_registry, read_toml

    t0 = time.perf_counter()
    data = read_toml(Path(path), "site registry")
    t1 = time.perf_counter()
    reg = parse_registry(data, path)
    t2 = time.perf_counter()
    return {"devices": len(reg.device_site), "toml_s": t1 - t0, "build_s": t2 - t1}


def _child_trace(path: str) -> dict[str, Any]:
    import gc
    import tracemalloc

    from geowarn.config.registry import load_registry

    gc.collect()
    tracemalloc.start()
    reg = load_registry(path)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"devices": len(reg.device_site), "traced_kept_b": current, "traced_peak_b": peak}


def _worker_target(registry: Any, ready: Any) -> None:
    ready.send((_status_kb("VmRSS"), 0 if registry is None else len(registry.device_site)))


def _spawn_once(registry: Any) -> tuple[float, int, int]:
    """Seconds from start() to the spawned process holding ``registry``, its RSS in kB, and how
    many devices it saw."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_target, args=(registry, ready_w), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    ready_w.close()
    rss, devices = ready_r.recv()
    elapsed = time.perf_counter() - t0
    proc.join(30)
    return elapsed, rss, devices


def _child_worker(path: str) -> dict[str, Any]:
    import pickle

    from geowarn.config.registry import load_registry

    reg = load_registry(path)
    t0 = time.perf_counter()
    blob = pickle.dumps(reg)
    pickle_s = time.perf_counter() - t0
    del blob
    empty_s, empty_rss, _ = min(_spawn_once(None) for _ in range(2))
    start_s, rss, devices = _spawn_once(reg)
    if devices != len(reg.device_site):
        raise SystemExit(f"the spawned process saw {devices} devices, not {len(reg.device_site)}")
    return {"devices": devices, "pickled_b": len(pickle.dumps(reg)), "pickle_s": pickle_s,
            "worker_start_s": start_s - empty_s, "worker_rss_b": (rss - empty_rss) * 1024}


CHILDREN = {"load": _child_load, "split": _child_split, "trace": _child_trace, "worker": _child_worker}


# -- parent ------------------------------------------------------------------------------


def _import_dir(tree: Path, scratch: Path, label: str) -> Path:
    """A folder holding only ``geowarn`` -> ``tree``: put first on PYTHONPATH it makes the
    tree the ``geowarn`` that is imported, whatever is installed."""
    d = scratch / f"import-{label}"
    d.mkdir(exist_ok=True)
    link = d / "geowarn"
    if not link.exists():
        link.symlink_to(tree.resolve(), target_is_directory=True)
    return d


def _run_child(what: str, path: Path, import_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(import_dir) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--child", what, str(path)], env=env, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{what} on {path} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _write_registry(n: int, scratch: Path) -> Path:
    path = scratch / f"sites_{n}.toml"
    if not path.exists():
        from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

        path.write_text(sites_toml(synthetic_sites(Template(devices_per_site=PER_SITE), n)), encoding="utf-8")
    return path


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True)
    # Only the registry's own module counts: other files' work in progress does not load it.
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "--", "config/registry.py"],
                           check=False, capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "?") + (" (config/registry.py changed since)" if dirty else "")


def _fmt_row(label: str, n: int, r: dict[str, Any]) -> str:
    def per(key: str) -> str:
        return f"{float(r[key]) / n:,.0f} B" if key in r else "–"

    def sec(key: str) -> str:
        return f"{r[key]:.2f} s" if key in r else "–"

    return (f"| {label} | {n:,} | {sec('load_s')} | {sec('toml_s')} + {sec('build_s')} | {per('rss_kept_b')} | {per('rss_peak_b')} "
            f"| {per('traced_kept_b')} | {per('traced_peak_b')} | {per('pickled_b')}, {sec('pickle_s')} "
            f"| {sec('worker_start_s')} | {per('worker_rss_b')} |")


HEADER = ("| tree | devices | load_registry | TOML parse + validate/build | RSS kept / device | RSS peak / device | traced kept / device | traced peak / device "
          "| pickled to a worker / device, time | worker gets it in | worker RSS / device |\n|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|")


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (a figure every run has)."""
    keys = [k for k in runs[0] if all(k in r for r in runs) and isinstance(runs[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def _write_registry_national(n: int, probes: int, scratch: Path) -> Path:
    """The registry ``benchmarks/national_scale.py`` runs the daemon on (its ``registry_text``):
    ``n`` synthetic devices and ``probes`` one-device probe sites."""
    path = scratch / f"sites_national_{n}_{probes}.toml"
    if not path.exists():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import national_scale

        path.write_text(national_scale.registry_text(n, probes), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,10000", help="devices per registry, comma-separated (default: a quick 2000,10000)")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", help="a checkout to measure (repeatable; default: this one)")
    ap.add_argument("--baseline-path", type=Path, default=None, metavar="PATH",
                    help="a checkout of the tree before a change: measured as 'before' beside this one as 'after' (as --tree before=PATH --tree after=.)")
    ap.add_argument("--shape", choices=("simulate", "national"), default="simulate",
                    help="registry files as `geowarn simulate` writes them (default) or as benchmarks/national_scale.py's registry_text")
    ap.add_argument("--probes", type=int, default=2, help="probe sites of --shape national (default 2)")
    ap.add_argument("--runs", type=int, default=1, help="fresh-process runs per figure; medians are reported (default 1)")
    ap.add_argument("--what", default="load,split,trace,worker", help="which measurements, comma-separated (default: all of load,split,trace,worker)")
    ap.add_argument("--scratch", type=Path, default=None, help="where the registry files go (default: a temporary folder, removed)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    ap.add_argument("--child", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](args.child[1])))
        return 0

    trees: list[tuple[str, Path]] = []
    specs = list(args.tree)
    if args.baseline_path is not None:
        specs = [f"before={args.baseline_path}"] + (specs or [f"after={ROOT}"])
    whats = [w for w in args.what.split(",") if w]
    if not whats or any(w not in CHILDREN for w in whats) or args.runs < 1:
        ap.error(f"--what: some of {', '.join(CHILDREN)}; --runs: 1 or more")
    for spec in specs or [f"this={ROOT}"]:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path, "config", "registry.py").is_file():
            ap.error(f"--tree {spec!r}: give LABEL=PATH of a GeoWarn checkout")
        trees.append((label, Path(path)))
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]

    with tempfile.TemporaryDirectory(prefix="registry-memory-") as tmp:
        scratch = args.scratch or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(_import_dir(ROOT, scratch, "writer")))
        rows: list[str] = []
        results: list[dict[str, Any]] = []
        for n in sizes:
            path = _write_registry_national(n, args.probes, scratch) if args.shape == "national" else _write_registry(n, scratch)
            devices = n + (args.probes if args.shape == "national" else 0)
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
            for _ in range(args.runs):
                for label, tree in trees:  # the trees take turns: a busy spell hits both
                    imp = _import_dir(tree, scratch, label)
                    got_all: dict[str, Any] = {}
                    for what in whats:
                        got = _run_child(what, path, imp)
                        if got["devices"] != devices:
                            raise SystemExit(f"{label}: the registry of {devices} devices loaded {got['devices']}")
                        got_all.update(got)
                    runs[label].append(got_all)
            for label, tree in trees:
                r: dict[str, Any] = {"tree": label, "commit": _commit(tree), "size": devices, "file_b": path.stat().st_size, "runs": len(runs[label])}
                r.update(_medians(runs[label]))
                r["every_run"] = runs[label]
                results.append(r)
                rows.append(_fmt_row(label, devices, r))
                print(rows[-1], flush=True)
    head = (f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d', time.gmtime())}; "
            f"{args.shape} registries; medians of {args.runs} run(s). "
            + "; ".join(f"{label}: {_commit(tree)}" for label, tree in trees))
    table = head + "\n\n" + HEADER + "\n" + "\n".join(rows) + "\n"
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
