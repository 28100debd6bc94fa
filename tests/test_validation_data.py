"""The real-record loader's sources (``benchmarks/validation_data.py``): files read in memory out
of a bare git snapshot at the commit PROVENANCE.md names, and refused unless their SHA-256 is the
one recorded in SHA256SUMS.

Golden values come from outside the code under test: the digests in
``benchmarks/data/<name>/SHA256SUMS`` (recorded when the data were gathered) and the eleven
landslide dates PROVENANCE.md describes. Tests that read a snapshot skip, with the reason, when
the mirror root (``$GEOWARN_VALIDATION_MIRRORS``, default ``/work/.mirror``) lacks it; no data
file is copied anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    name = "geowarn_benchmark_validation_data"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "validation_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


vd = _load()

SEATTLE = "usgs_seattle_rain_landslides"
SPEC = vd.MIRRORED[SEATTLE]
GIT_DIR = vd.mirror_git_dir(SPEC)
needs_mirror = pytest.mark.skipif(GIT_DIR is None, reason=f"git snapshot {vd.mirror_root() / SPEC.mirror} absent")


def _recorded(name: str, fname: str) -> str:
    """The digest SHA256SUMS records, read here independently of the module's parser."""
    for line in (REPO / "benchmarks" / "data" / name / "SHA256SUMS").read_text().splitlines():
        digest, f = line.split()
        if f == fname:
            return digest
    raise AssertionError(f"{fname} not in SHA256SUMS")


@needs_mirror
def test_mirror_reads_a_file_whose_checksum_matches_sha256sums() -> None:
    src = vd.MirrorSource(SEATTLE, GIT_DIR, SPEC)
    data = src.read_bytes("dates2011Muk.txt")
    assert hashlib.sha256(data).hexdigest() == _recorded(SEATTLE, "dates2011Muk.txt")
    dates = data.decode().split()
    assert len(dates) == 11 and dates[0] == "12/09/2010" and dates[-1] == "11/23/2011"  # PROVENANCE.md: 11 dates 2010-12-09 … 2011-11-23


@needs_mirror
def test_locate_falls_back_to_the_mirror_and_loads_the_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOWARN_VALIDATION_DATA", str(tmp_path))  # an empty folder root: no folder copy
    ds = vd.load(SEATTLE)
    assert isinstance(ds.source, vd.MirrorSource)
    assert [s.device for s in ds.series] == ["KBFI", "KPAE", "KSEA", "KTIW"]
    assert len(ds.events) == 11


@needs_mirror
def test_a_wrong_checksum_is_refused_with_the_file_and_both_digests() -> None:
    wrong = "0" * 64
    src = vd.MirrorSource(SEATTLE, GIT_DIR, SPEC, sums={"dates2011Muk.txt": wrong})
    with pytest.raises(vd.ChecksumMismatch) as err:
        src.text("dates2011Muk.txt")
    msg = str(err.value)
    assert "dates2011Muk.txt" in msg and wrong in msg and _recorded(SEATTLE, "dates2011Muk.txt") in msg
    assert "not parsed" in msg
    assert src.verify_all() == [msg]


@needs_mirror
def test_a_file_missing_from_sha256sums_is_not_read() -> None:
    src = vd.MirrorSource(SEATTLE, GIT_DIR, SPEC, sums={"KBFI_t.txt": _recorded(SEATTLE, "KBFI_t.txt")})
    with pytest.raises(vd.ChecksumMismatch, match="not listed"):
        src.read_bytes("dates2011Muk.txt")


@needs_mirror
def test_a_commit_the_snapshot_lacks_is_reported_as_absent() -> None:
    bogus = vd.Mirrored(SPEC.repo, "f" * 40, SPEC.paths)
    src = vd.MirrorSource(SEATTLE, GIT_DIR, bogus)
    assert not src.has_commit()
    with pytest.raises(vd.DataAbsent, match="not readable"):
        src.read_bytes("dates2011Muk.txt")


@pytest.mark.skipif((REPO.parent / "shared" / "validation_data").is_dir(), reason="../shared/validation_data exists: a folder source is always found")
def test_no_mirror_means_data_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOWARN_VALIDATION_DATA", str(tmp_path / "folders"))
    monkeypatch.setenv("GEOWARN_VALIDATION_MIRRORS", str(tmp_path / "mirrors"))
    with pytest.raises(vd.DataAbsent, match="git snapshot"):
        vd.locate(SEATTLE)
    assert [ds.name for ds in vd.datasets("validation")] == []


def test_folder_source_checks_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"12/09/2010\n")
    good = hashlib.sha256(b"12/09/2010\n").hexdigest()
    assert vd.FolderSource("x", tmp_path, sums={"a.txt": good}).text("a.txt") == "12/09/2010\n"
    with pytest.raises(vd.ChecksumMismatch, match="differs"):
        vd.FolderSource("x", tmp_path, sums={"a.txt": "1" * 64}).read_bytes("a.txt")


def test_mirror_table_agrees_with_provenance_and_sha256sums() -> None:
    for name in vd.MIRRORED:
        assert vd.check_provenance(name) == []
