"""Journal → InfluxDB forwarder: the journal is the buffer, the saved position is the truth.

It reads readings after its saved position in arrival order, writes them as line protocol in
one synchronous request per batch (measurement = channel kind; tags site, device, channel,
admin; field ``value``; millisecond timestamps), and moves the position only after the server
accepted the batch. While the server is down it retries the same batch with exponential
backoff, so nothing is dropped; a batch that was accepted but whose position was not yet saved
is written again after a crash, which InfluxDB (and VictoriaMetrics with deduplication)
stores once because series + timestamp identify a point.

influxdb-client's batching WriteApi is deliberately not used: it buffers in memory and can
drop data silently when the server stays away. Drill readings carry the tag ``exercise=true``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from geowarn.ingest.journal import Journal
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

POSITION_KEY = "forwarder.influx.position"


def _escape_key(s: str) -> str:
    # Line protocol: measurement names escape commas and spaces; tag keys/values also '='.
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def to_lines(rows: list[tuple[int, str, str, str, str, str, int, float, int]]) -> list[str]:
    out = []
    for _id, kind, site, device, channel, admin, t_ms, value, drill in rows:
        tags = f"admin={_escape_key(admin)},channel={_escape_key(channel)},device={_escape_key(device)},site={_escape_key(site)}"
        if drill:
            tags += ",exercise=true"
        out.append(f"{_escape_key(kind)},{tags} value={float(value)!r} {t_ms}")
    return out


@dataclass
class ForwarderStatus:
    position: int
    last_id: int
    lag_readings: int
    lag_s: float | None  # age of the oldest reading not yet forwarded (ingest clock)
    failures: int
    last_error: str | None


class Forwarder:
    def __init__(
        self,
        journal_path: Path,
        *,
        url: str,
        token: str,
        org: str,
        bucket: str,
        batch: int = 5000,
        timeout_s: float = 10.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        now: Callable[[], float],
    ) -> None:
        self.journal_path = journal_path
        self.url, self.token, self.org, self.bucket = url, token, org, bucket
        self.batch = batch
        self.timeout_s = timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.now = now
        self.failures = 0
        self.last_error: str | None = None
        self.forwarded = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = ForwarderStatus(0, 0, 0, None, 0, None)

    def status(self) -> ForwarderStatus:
        return self._status

    def wake(self) -> None:
        """New readings are in the journal (called by the pipeline after a commit)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="geowarn-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _refresh_status(self, journal: Journal, position: int) -> None:
        last = journal.last_id()
        lag_s = None
        if last > position:
            nxt = journal.read_after(position, 1)
            received = journal.received_ms_of(nxt[0][0]) if nxt else None
            if received is not None:
                lag_s = max(0.0, self.now() - received / 1000.0)
        self._status = ForwarderStatus(position, last, last - position, lag_s, self.failures, self.last_error)

    def _run(self) -> None:
        journal = Journal(self.journal_path)
        client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=int(self.timeout_s * 1000))
        write_api = client.write_api(write_options=SYNCHRONOUS)
        backoff = self.min_backoff_s
        try:
            position = int(journal.get_state(POSITION_KEY, 0))
            while not self._stop.is_set():
                rows = journal.read_after(position, self.batch)
                if not rows:
                    self._refresh_status(journal, position)
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                try:
                    write_api.write(bucket=self.bucket, org=self.org, record=to_lines(rows), write_precision=WritePrecision.MS)  # type: ignore[arg-type]
                except Exception as exc:  # any failure: keep the position, back off, retry the same batch
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    if self.failures == 1 or self.failures % 20 == 0:
                        log.warning("InfluxDB write failed; retrying", extra=kv(failures=self.failures, retry_in_s=round(backoff, 1), error=self.last_error))
                    self._refresh_status(journal, position)
                    self._stop.wait(backoff)
                    backoff = min(self.max_backoff_s, backoff * 2)
                    continue
                backoff = self.min_backoff_s
                position = rows[-1][0]
                journal.set_state(POSITION_KEY, position)
                self.forwarded += len(rows)
                self.last_error = None
                self._refresh_status(journal, position)
        finally:
            client.close()
            journal.close()
