"""The detector contract: what every detector is, and the rules the shared suite checks.

A detector is a small stateful object:

    update(t, value) -> Verdict     one reading, in event time (seconds); never reads a clock
    snapshot() -> dict              JSON-serialisable state
    restore(dict) -> None           continue exactly where the snapshot was taken

Rules every detector keeps (``tests/test_detector_contract.py`` checks them, over the cases
and batch references of ``tests/oracles/``, which only tests use):

- public parameters are constructor arguments, validated with ``ValueError`` naming the valid
  values; private state is created by one ``_reset()`` that ``__init__`` calls
  (``geowarn.detectors.base``);
- no mutable default arguments;
- while ``warming_up`` the level is 0: a detector that does not yet know enough says nothing;
- the same input gives the same verdicts (no randomness, no clock);
- a snapshot taken after any reading, restored into a fresh detector, gives the same later
  verdicts as the uninterrupted detector;
- a batch reference (numpy/scipy, written independently of the streaming code) gives the
  same levels as streaming, however the input is chunked;
- evidence is a flat-ish dict of JSON-serialisable values (it ends up in alerts.jsonl).
"""

from __future__ import annotations

from typing import Any, Protocol

from geowarn.detectors.verdict import Verdict


class Detector(Protocol):
    def update(self, t: float, value: float) -> Verdict: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...
