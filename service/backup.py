"""``geowarn backup`` and ``geowarn restore``: a data directory copied while the daemon runs,
and put back (issue 16, item 4).

A backup is a folder ``geowarn-backup-<UTC time>`` holding every SQLite store of the data
directory as a consistent copy made with SQLite's online backup API (readers and the daemon's
writers go on meanwhile; a copy is the file as of one transaction), the other files the daemon
needs to resume (the control key, the alert log, CAP files), and ``manifest.json``: each
file's size and SHA-256, each store's schema name and version, row counts, the GeoWarn
version and the time.

**Order makes the set consistent.** The stores are separate files, so they are copied one after
another, in the order the pipeline writes them downstream-last: the journal first, then the
outbox, then the message log. Each stage resumes from a position kept in what it writes
(DESIGN §1), and every later copy is at least as new as the earlier ones — the same state a
SIGKILL can leave: the store stage decodes again the message-log batches after the journal's
position (readings are stored once by their key), and detection judges again from its
checkpoint (the outbox keys its messages by event, so nothing is sent twice). The opposite
order could leave a journal that claims batches the message log copy never had.

Restore refuses to touch a data directory a daemon is using (its workers' locks are held), and
one that already has stores unless ``--force`` (which moves them aside, never deletes them).
Every file is checked against the manifest before anything is written, and a store written by
a newer GeoWarn is refused, naming the file.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geowarn.core.sqlite import NewerSchemaError, Schema

__all__ = ["BackupError", "add_backup_parsers", "backup", "restore"]

MANIFEST = "manifest.json"
FORMAT = 1
#: The stores, in the order they are copied (see the module docstring: downstream last).
STORE_ORDER = ("journal.sqlite", "tokens.sqlite", "outbox.sqlite", "messages.sqlite")
#: Files and folders that are part of a data directory but not stores (copied as they are).
OTHER_FILES = ("control.key", "alerts.jsonl")
OTHER_DIRS = ("cap", "notify")
#: Lock files of the daemon's workers: held while a daemon uses the directory.
LOCKS = ("daemon.lock", "store.lock", "detection.lock")


class BackupError(Exception):
    """A backup or restore cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Copied:
    name: str
    size: int
    sha256: str
    schema: str | None = None
    version: int | None = None
    rows: dict[str, int] | None = None


def _schemas() -> dict[str, Schema]:
    from geowarn.alerts.outbox import OUTBOX_FILE, OUTBOX_SCHEMA
    from geowarn.console.tokens import TOKENS_FILE, TOKENS_SCHEMA
    from geowarn.ingest.journal import JOURNAL_FILE, JOURNAL_SCHEMA
    from geowarn.ingest.messagelog import MESSAGES_FILE, MESSAGES_SCHEMA

    return {JOURNAL_FILE: JOURNAL_SCHEMA, OUTBOX_FILE: OUTBOX_SCHEMA, MESSAGES_FILE: MESSAGES_SCHEMA, TOKENS_FILE: TOKENS_SCHEMA}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geowarn")
    except PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _copy_store(src: Path, dst: Path, schema: Schema | None) -> Copied:
    """An online, consistent copy of one SQLite store: the backup API in ONE step, i.e. one
    read transaction. In WAL mode a reader does not block the daemon's writers; copying in
    small steps instead would restart from the first page at every write the store worker
    commits between two steps, and on a busy, year-sized journal never finish."""
    source = sqlite3.connect(f"{Path(src).resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        source.execute("PRAGMA busy_timeout = 30000")
        target = sqlite3.connect(dst)
        try:
            source.backup(target, pages=-1)
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            version = int(target.execute("PRAGMA user_version").fetchone()[0])
            rows = {t: int(target.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in _tables(target)}
            check = target.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            target.close()
    finally:
        source.close()
    if check != "ok":
        raise BackupError(f"{src}: the copy fails SQLite's integrity check ({check}); the store itself may be damaged")
    os.chmod(dst, 0o600)
    return Copied(src.name, dst.stat().st_size, _sha256(dst), schema.name if schema else None, version, rows)


def backup(data_dir: Path, dest: Path, *, now: float | None = None) -> Path:
    """Copy ``data_dir`` into a new folder under ``dest``; returns that folder."""
    data_dir = Path(data_dir)
    if not (data_dir / "journal.sqlite").exists():
        raise BackupError(f"{data_dir}: no journal.sqlite here; is this GeoWarn's data directory? (GEOWARN_DATA_DIR, --config, --data-dir)")
    t = time.time() if now is None else now
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = Path(dest)
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise BackupError(f"{dest} is inside the data directory {data_dir}: keep backups elsewhere (a restore replaces the directory)")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = dest / f"geowarn-backup-{stamp}"
    partial = dest / f".{out.name}.partial"
    if out.exists():
        raise BackupError(f"{out} exists already")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    try:
        return _fill(data_dir, partial, out, t)
    finally:
        # A failed backup leaves no copies of the control key or the tokens behind.
        shutil.rmtree(partial, ignore_errors=True)


def _fill(data_dir: Path, partial: Path, out: Path, t: float) -> Path:
    schemas = _schemas()
    files: list[Copied] = []
    known = set(STORE_ORDER)
    stores = [n for n in STORE_ORDER if (data_dir / n).exists()]
    stores += sorted(p.name for p in data_dir.glob("*.sqlite") if p.name not in known)  # a store this list does not know yet
    for name in stores:
        files.append(_copy_store(data_dir / name, partial / name, schemas.get(name)))
    for name in OTHER_FILES:
        src = data_dir / name
        if src.exists():
            data = src.read_bytes()
            if name.endswith(".jsonl"):
                data = data[: data.rfind(b"\n") + 1]  # a line being appended right now is left for the next backup
            (partial / name).write_bytes(data)
            os.chmod(partial / name, 0o600)
            files.append(Copied(name, (partial / name).stat().st_size, _sha256(partial / name)))
    for folder in OTHER_DIRS:
        src = data_dir / folder
        if not src.is_dir():
            continue
        for f in sorted(src.rglob("*")):
            if not f.is_file() or f.name.endswith(".tmp"):
                continue  # a CAP file being written is renamed into place when done
            rel = f.relative_to(data_dir)
            copy = partial / rel
            copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                data = f.read_bytes()
            except FileNotFoundError:
                continue  # pruned or renamed while copying
            if f.suffix == ".jsonl":
                data = data[: data.rfind(b"\n") + 1]  # a line being appended is left for the next backup
            copy.write_bytes(data)
            os.chmod(copy, 0o600)
            files.append(Copied(rel.as_posix(), len(data), _sha256(copy)))
    manifest = {
        "format": FORMAT,
        "geowarn": _version(),
        "created": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
        "data_dir": str(data_dir.resolve()),
        "order": stores,
        "files": [
            {k: v for k, v in vars(c).items() if v is not None}
            for c in files
        ],
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.chmod(partial / MANIFEST, 0o600)
    _fsync_tree(partial)
    partial.rename(out)  # a backup folder without its .partial prefix is complete
    return out


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{folder}: no {MANIFEST}; not a GeoWarn backup (or an unfinished one)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r}, this GeoWarn reads format {FORMAT}")
    return dict(manifest)


def verify(folder: Path) -> dict[str, Any]:
    """The manifest, once every file it lists is present with its size and SHA-256 and no store
    is newer than this GeoWarn; raises BackupError naming the first problem."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        _check_files(folder, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A hand-edited or damaged manifest: a clear refusal, not a traceback.
        raise BackupError(f"{folder / MANIFEST}: malformed ({type(exc).__name__}: {exc})") from None
    return manifest


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    schemas = _schemas()
    for f in manifest["files"]:
        name = str(f["name"])
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise BackupError(f"{folder / MANIFEST}: file name {name!r} leaves the backup folder")
        if not path.is_file():
            raise BackupError(f"{path}: missing from the backup")
        if path.stat().st_size != f["size"] or _sha256(path) != f["sha256"]:
            raise BackupError(f"{path}: differs from the manifest (size or SHA-256): the backup is damaged")
        schema = schemas.get(name)
        if schema is not None and int(f.get("version", 0)) > len(schema.migrations):
            raise BackupError(
                str(NewerSchemaError(f"{path}: {schema.name} schema version {f['version']} was written by a newer GeoWarn "
                                     f"(this one knows up to {len(schema.migrations)}); restore it with that version"))
            )


def _in_use(data_dir: Path) -> str | None:
    for name in LOCKS:
        path = data_dir / name
        if not path.exists():
            continue
        with path.open("r") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return name
            fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def restore(folder: Path, data_dir: Path, *, force: bool = False, now: float | None = None) -> Path | None:
    """Put backup ``folder`` into ``data_dir``; returns where the replaced files went (--force)."""
    from geowarn.service.worker import DataDirBusy, claim_data_dir

    folder, data_dir = Path(folder), Path(data_dir)
    manifest = verify(folder)
    if folder.resolve().is_relative_to(data_dir.resolve()):
        raise BackupError(f"{folder} is inside the data directory {data_dir}: move it out first (a restore replaces the directory)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    held = _in_use(data_dir)
    if held:
        raise BackupError(f"{data_dir}: a GeoWarn daemon is using this data directory ({held} is held); stop it first")
    # Hold the daemon's own lock while writing: a daemon started meanwhile is refused instead
    # of opening half-restored stores.
    try:
        lock = claim_data_dir(data_dir)
    except DataDirBusy as exc:
        raise BackupError(str(exc)) from None
    try:
        return _restore_into(folder, data_dir, manifest, force, now)
    finally:
        lock.close()


def _restore_into(folder: Path, data_dir: Path, manifest: dict[str, Any], force: bool, now: float | None) -> Path | None:
    present = sorted(p.name for p in data_dir.iterdir() if p.name not in LOCKS)
    moved_to: Path | None = None
    if present:
        if not force:
            raise BackupError(f"{data_dir}: not empty ({', '.join(present[:5])}{'…' if len(present) > 5 else ''}); "
                              "restore into an empty directory, or --force to move these aside first")
        stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%SZ")
        moved_to = data_dir.with_name(f"{data_dir.name}.replaced-{stamp}")
        moved_to.mkdir(mode=0o700)
        for name in present:
            os.replace(data_dir / name, moved_to / name)
    # Run as root (sudo geowarn restore) for a daemon that runs as its own user: the files must
    # be that user's, or the service cannot open its stores and restarts forever.
    st = data_dir.stat()
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    for f in manifest["files"]:
        src, dst = folder / f["name"], data_dir / f["name"]
        for parent in reversed(dst.relative_to(data_dir).parents[:-1]):
            d = data_dir / parent
            if not d.exists():
                d.mkdir(mode=0o700)
                if owner:
                    os.chown(d, *owner)
        tmp = dst.with_name(dst.name + ".restoring")
        shutil.copy2(src, tmp)
        os.chmod(tmp, 0o600)
        if owner:
            os.chown(tmp, *owner)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    return moved_to


# -- command line --------------------------------------------------------------------------


def add_backup_parsers(sub: Any) -> None:
    b = sub.add_parser("backup", help="consistent online copy of the data directory's stores, with a manifest")
    b.add_argument("dest", help="folder to put the backup in (a geowarn-backup-<time> folder is made inside)")
    b.add_argument("--config", default=None)
    b.add_argument("--data-dir", default=None, help="overrides GEOWARN_DATA_DIR")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", help="put a backup back into a data directory (the daemon stopped)")
    r.add_argument("backup", help="a geowarn-backup-<time> folder")
    r.add_argument("--config", default=None)
    r.add_argument("--data-dir", default=None, help="overrides GEOWARN_DATA_DIR")
    r.add_argument("--force", action="store_true", help="move what the data directory holds aside (DIR.replaced-<time>) instead of refusing")
    r.add_argument("--verify-only", action="store_true", help="check the backup against its manifest and stop")
    r.set_defaults(func=cmd_restore)


def _data_dir(args: argparse.Namespace) -> Path | None:
    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import load_settings

    if args.data_dir:
        return Path(args.data_dir)
    try:
        return Path(load_settings(args.config).data_dir)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"configuration error: {p}", file=sys.stderr)
        return None


def cmd_backup(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if data_dir is None:
        return 2
    try:
        out = backup(data_dir, Path(args.dest))
    except (BackupError, sqlite3.Error, OSError) as exc:
        print(f"error: backup of {data_dir} failed: {exc}", file=sys.stderr)
        return 1
    manifest = read_manifest(out)
    total = sum(int(f["size"]) for f in manifest["files"])
    print(f"backed up {data_dir} to {out} ({len(manifest['files'])} files, {total / 1e6:.1f} MB)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        if args.verify_only:
            manifest = verify(Path(args.backup))
            print(f"{args.backup}: {len(manifest['files'])} files match the manifest (GeoWarn {manifest['geowarn']}, {manifest['created']})")
            return 0
        data_dir = _data_dir(args)
        if data_dir is None:
            return 2
        moved = restore(Path(args.backup), data_dir, force=args.force)
    except (BackupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.backup} into {data_dir}" + (f"; what was there is in {moved}" if moved else ""))
    return 0
