"""The real-record loader's sources (``benchmarks/validation_data.py``): files read in memory out
of a bare git snapshot at the commit PROVENANCE.md names, and refused unless their SHA-256 is the
one recorded in SHA256SUMS.

Golden values come from outside the code under test: the digests in
``benchmarks/data/<name>/SHA256SUMS`` (recorded when the data were gathered) and the eleven
landslide dates PROVENANCE.md describes; for the Dexing record, the first and last epochs and the
7-minute sampling its source's data README states, and the workbook's own cells read with a
regular expression instead of the loader's parser. Tests that read a snapshot skip, with the reason, when
the mirror root (``$GEOWARN_VALIDATION_MIRRORS``, default ``/work/.mirror``) lacks it; no data
file is copied anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import sys
import zipfile
from datetime import datetime, timedelta, timezone
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


# -- dexing_gbsar_failure: the one real record that runs to a failure ------------------------------

DEXING = "dexing_gbsar_failure"
DEXING_SPEC = vd.MIRRORED[DEXING]
DEXING_GIT = vd.mirror_git_dir(DEXING_SPEC)
needs_dexing = pytest.mark.skipif(DEXING_GIT is None, reason=f"git snapshot {vd.mirror_root() / DEXING_SPEC.mirror} absent")
CN = timezone(timedelta(hours=8))
# The source's data README (PROVENANCE.md): GB-SAR every 7 min from 2018-05-04 14:24 to 2018-05-05 14:54, local time (UTC+8).
DEXING_FIRST = datetime(2018, 5, 4, 14, 24, tzinfo=CN).timestamp()
DEXING_LAST = datetime(2018, 5, 5, 14, 54, tzinfo=CN).timestamp()


def _cells(xlsx: bytes, column: str) -> dict[int, str]:
    """Row number -> raw value of one column's cells, read straight from the worksheet XML with a
    regular expression (independently of ``validation_data.xlsx_rows``)."""
    sheet = zipfile.ZipFile(io.BytesIO(xlsx)).read("xl/worksheets/sheet1.xml").decode()
    return {int(n): v for n, v in re.findall(rf'<c r="{column}(\d+)"[^>]*>(?:<f>[^<]*</f>)?<v>([^<]*)</v>', sheet)}


@needs_dexing
def test_dexing_loads_from_the_mirror_with_the_times_its_source_states(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOWARN_VALIDATION_DATA", str(tmp_path))  # no folder copy: the snapshot is read
    ds = vd.load(DEXING)
    assert isinstance(ds.source, vd.MirrorSource) and ds.split == "validation"
    assert ds.failed and ds.failure_time == DEXING_LAST
    [s] = ds.series
    assert (s.kind, s.unit, s.site, s.device) == ("displacement", "mm", "dexing_north", "gbsar")
    assert s.t[0] == DEXING_FIRST and s.t[-1] == DEXING_LAST
    assert {b - a for a, b in zip(s.t, s.t[1:])} == {420.0}  # every 7 minutes, no gap
    assert len(s.t) == (DEXING_LAST - DEXING_FIRST) / 420.0 + 1


@needs_dexing
def test_dexing_values_are_the_workbooks_displacement_cells() -> None:
    src = vd.MirrorSource(DEXING, DEXING_GIT, DEXING_SPEC)
    raw = src.read_bytes("DeXing.xlsx")
    assert hashlib.sha256(raw).hexdigest() == _recorded(DEXING, "DeXing.xlsx")
    disp = _cells(raw, "C")  # column C is "Displacement (mm)"; row 1 is the header
    flags = _cells(raw, "E")  # column E is "landslide"
    [s] = vd.load_dexing_gbsar_failure(src).series
    rows = sorted(n for n in disp if n > 1)
    assert s.value == [float(disp[n]) for n in rows]
    assert [n for n in rows if flags.get(n) not in (None, "0")] == [rows[-1]]  # the failure is flagged on the last row only


def _workbook(rows: list[list[str]]) -> bytes:
    """A minimal .xlsx (inline strings and numbers), written with zipfile as Excel lays it out."""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    body = []
    for i, row in enumerate(rows, start=1):
        cells = []
        for j, v in enumerate(row):
            ref = f"{chr(65 + j)}{i}"
            try:
                float(v)
                cells.append(f'<c r="{ref}"><v>{v}</v></c>')
            except ValueError:
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{v}</t></is></c>')
        body.append(f'<row r="{i}">{"".join(cells)}</row>')
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("xl/worksheets/sheet1.xml", f'<worksheet xmlns="{ns}"><sheetData>{"".join(body)}</sheetData></worksheet>')
    return out.getvalue()


def test_a_dexing_workbook_without_the_failure_flag_is_refused(tmp_path: Path) -> None:
    header = ["No.", "Time", "Displacement (mm)", "Velocity (mm/min)", "landslide"]
    data = _workbook([header, ["0", "43224.6", "66.2", "", "0"], ["1", "43224.604861111111", "66.8", "0.6", "0"]])
    (tmp_path / "DeXing.xlsx").write_bytes(data)
    src = vd.FolderSource(DEXING, tmp_path, sums={"DeXing.xlsx": hashlib.sha256(data).hexdigest()})
    assert vd.xlsx_rows(data)[1] == ["0", "43224.6", "66.2", "", "0"]
    with pytest.raises(ValueError, match="landslide flag"):
        vd.load_dexing_gbsar_failure(src)


def test_a_file_that_is_not_a_workbook_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a readable .xlsx"):
        vd.xlsx_rows(b"No.,Time,Displacement\n0,43224.6,66.2\n")
