"""The alert log (``alerts.jsonl``): one whole JSON line per event, whatever the last write left."""

from __future__ import annotations

import json

from geowarn.alerts.log import AlertLog
from geowarn.core.events import LevelChange


def test_a_line_torn_by_a_full_disk_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "alerts.jsonl"
    sent: list[tuple[str, bytes, bool]] = []
    log = AlertLog(path, lambda topic, payload, retain: sent.append((topic, payload, retain)))
    log.emit(LevelChange("BSH", 1.7e9, 2, 0, "velocity 5 mm/day", {}, False), "420527")
    with open(path, "ab") as fh:
        fh.write(b'{"id": "half a line, the disk filled up he')  # what ENOSPC leaves
    log.emit(LevelChange("BSH", 1.7e9 + 60, 3, 2, "velocity 80 mm/day", {}, False), "420527")
    lines = path.read_bytes().split(b"\n")
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    assert [e["level"] for e in events] == [2, 3]
    assert lines[-1] == b"" and lines[-2].startswith(b"{") and json.loads(lines[-2])["level"] == 3
    assert len(sent) == 2
