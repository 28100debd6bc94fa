"""The shared contract suite (STYLE habit 3, river's checks): every detector's
``contract_cases()`` (``tests/oracles/``) is run through the same checks. See
``detectors/contract.py``."""

from __future__ import annotations

import importlib
import inspect
import json

import numpy as np
import pytest

from geowarn.detectors.base import StreamingDetector
from geowarn.detectors.verdict import Verdict
from oracles.contract import ContractCase

MODULES = [
    "oracles.threshold",
    "oracles.velocity",
    "oracles.tangent",
    "oracles.inverse_velocity",
    "oracles.quality",
    "oracles.rain",
    "oracles.rise",
]


def _cases() -> list[ContractCase]:
    out: list[ContractCase] = []
    for name in MODULES:
        out.extend(importlib.import_module(name).contract_cases())
    return out


CASES = _cases()
IDS = [c.name for c in CASES]
SEEDS = [0, 1, 2]


def _run(det, t, v) -> list[Verdict]:
    return [det.update(float(a), float(b)) for a, b in zip(t, v)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_streaming_equals_the_batch_reference(case: ContractCase, seed: int):
    t, v = case.series(seed)
    streamed = [x.level for x in _run(case.make(), t, v)]
    assert streamed == list(case.batch(t, v))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_chunked_streaming_equals_one_pass(case: ContractCase):
    """Feeding the series in chunks through snapshot/restore (a restart between chunks)
    changes nothing."""
    t, v = case.series(0)
    whole = _run(case.make(), t, v)
    rng = np.random.default_rng(42)
    cuts = sorted(set(rng.integers(1, len(t) - 1, size=6).tolist()))
    det = case.make()
    got: list[Verdict] = []
    start = 0
    for cut in [*cuts, len(t)]:
        got += _run(det, t[start:cut], v[start:cut])
        state = json.loads(json.dumps(det.snapshot()))
        det = case.make()
        det.restore(state)
        start = cut
    assert got == whole


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_reaches_its_level_and_warm_up_never_fires(case: ContractCase, seed: int):
    t, v = case.series(seed)
    verdicts = _run(case.make(), t, v)
    assert max(x.level for x in verdicts) >= case.reaches
    assert all(x.level == 0 for x in verdicts if x.warming_up)
    assert verdicts[0].warming_up or verdicts[0].level == 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_deterministic(case: ContractCase):
    t, v = case.series(3)
    assert _run(case.make(), t, v) == _run(case.make(), t, v)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_evidence_and_snapshot_are_json(case: ContractCase):
    t, v = case.series(0)
    det = case.make()
    for x in _run(det, t, v):
        json.dumps(x.evidence)
        assert isinstance(x.reason, str)
    json.dumps(det.snapshot())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_mutable_default_arguments(case: ContractCase):
    det = case.make()
    for cls in type(det).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            assert not isinstance(p.default, (list, dict, set)), f"{cls.__name__}.__init__({p.name}=...) is mutable"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_late_and_repeated_readings_are_ignored(case: ContractCase):
    t, v = case.series(0)
    det = case.make()
    mid = len(t) // 2
    _run(det, t[:mid], v[:mid])
    before = json.dumps(det.snapshot(), sort_keys=True)
    det.update(float(t[mid // 2]), float(v[mid // 2]) + 1e6)  # late
    det.update(float(t[mid - 1]), float(v[mid - 1]) + 1e6)  # repeated time
    assert json.dumps(det.snapshot(), sort_keys=True) == before


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parameters_are_public_attributes(case: ContractCase):
    # river's habit: every constructor parameter is kept under its own name; only a shared
    # resource handed in (a channel's SlopeWindows) is private state.
    det = case.make()
    assert isinstance(det, StreamingDetector)
    names = [p for p in inspect.signature(type(det).__init__).parameters if p != "self"]
    private = [p for p in names if not hasattr(det, p)]
    assert private in ([], ["windows"])
    assert names and sorted(det.params()) == sorted(set(names) - set(private))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reset_makes_a_fresh_detector(case: ContractCase):
    # All mutable state is created by _reset(): a detector reset half-way through the series
    # has the snapshot of a fresh one and then says what a fresh one says.
    t, v = case.series(0)
    mid = len(t) // 2
    det, fresh = case.make(), case.make()
    _run(det, t[:mid], v[:mid])
    fed, new = json.dumps(det.snapshot(), sort_keys=True), json.dumps(fresh.snapshot(), sort_keys=True)
    assert fed != new or new == "{}"  # only a stateless guard (RangeGuard) has nothing to reset
    det._reset()
    assert json.dumps(det.snapshot(), sort_keys=True) == json.dumps(fresh.snapshot(), sort_keys=True)
    assert _run(det, t[mid:], v[mid:]) == _run(fresh, t[mid:], v[mid:])


def _shared_defaults(reference, detector) -> tuple[dict, dict]:
    import inspect

    ref = {n: p.default for n, p in inspect.signature(reference).parameters.items() if p.default is not inspect.Parameter.empty}
    det = {n: p.default for n, p in inspect.signature(detector.__init__).parameters.items() if p.default is not inspect.Parameter.empty}
    shared = set(ref) & set(det)
    return {n: ref[n] for n in shared}, {n: det[n] for n in shared}


@pytest.mark.parametrize(
    "reference, detector",
    [
        ("oracles.inverse_velocity:forecast_batch", "geowarn.detectors.inverse_velocity:InverseVelocityDetector"),
        ("oracles.rise:rise_rate_batch", "geowarn.detectors.rise:RiseRateDetector"),
        ("oracles.tangent:tangent_batch", "geowarn.detectors.tangent:TangentAngleDetector"),
    ],
)
def test_a_batch_reference_keeps_its_detectors_defaults(reference: str, detector: str) -> None:
    """The batch references are written apart from the detectors on purpose, defaults included;
    this is what keeps the two from drifting apart when a default is tuned."""
    def load(spec: str):
        module, _, name = spec.partition(":")
        return getattr(importlib.import_module(module), name)

    ref, det = _shared_defaults(load(reference), load(detector))
    assert len(ref) >= 4, "the signatures share too few parameters for the check to mean anything"
    assert ref == det
