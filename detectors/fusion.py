"""Site fusion: the channel detectors of every site and one level per site.

First pass (to be replaced by the confirmation policy of the detectors issue): the site level
is the highest channel level. Readings outside a channel's plausible range are suspect and
never move a level. Drills are judged apart from real data so an exercise can never raise or
lower a real warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from config.registry import DISPLACEMENT_LIKE, ChannelInfo, Kind, Registry
from detectors.threshold import ThresholdDetector
from detectors.velocity import VelocityDetector
from detectors.verdict import Verdict


class Detector(Protocol):
    def update(self, t: float, value: float) -> Verdict: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A site's fused level moved."""

    site: str
    t: float
    level: int
    previous: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    exercise: bool = False


def detectors_for(info: ChannelInfo, registry: Registry) -> list[tuple[str, Detector]]:
    """The first-pass detector set of one channel, from its spec and its site's policy."""
    site = registry.sites[info.site]
    policy = site.policy
    spec = info.spec
    out: list[tuple[str, Detector]] = []
    if spec.thresholds is not None and spec.thresholds.as_list():
        out.append(
            ("threshold", ThresholdDetector(spec.thresholds.as_list(), hysteresis=policy.hysteresis, hold_s=policy.hold_s, unit=info.unit or ""))
        )
    if spec.kind in DISPLACEMENT_LIKE:
        levels = (spec.velocity_per_day or policy.velocity_per_day).as_list()
        if levels:
            out.append(
                (
                    "velocity",
                    VelocityDetector(
                        levels, window_s=policy.velocity_window_s, hysteresis=policy.hysteresis, hold_s=policy.hold_s, unit=info.unit or ""
                    ),
                )
            )
    return out


class _SiteState:
    __slots__ = ("level", "channels")

    def __init__(self) -> None:
        self.level = 0
        self.channels: dict[str, tuple[int, str, dict[str, Any]]] = {}  # "device/channel" -> (level, reason, evidence)


class SiteFusion:
    """Feeds readings to channel detectors and reports each change of a site's level."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._detectors: dict[tuple[ChannelInfo, bool], list[tuple[str, Detector]]] = {}
        self._sites: dict[tuple[str, bool], _SiteState] = {}
        self.suspect = 0  # readings outside the plausible range, counted

    def level(self, site: str, exercise: bool = False) -> int:
        st = self._sites.get((site, exercise))
        return 0 if st is None else st.level

    def set_level(self, site: str, level: int, exercise: bool = False) -> None:
        """Restore a persisted site level (after a restart) without reporting a change."""
        self._site(site, exercise).level = level

    def _site(self, site: str, exercise: bool) -> _SiteState:
        st = self._sites.get((site, exercise))
        if st is None:
            st = self._sites[(site, exercise)] = _SiteState()
        return st

    def update(self, info: ChannelInfo, t: float, value: float, exercise: bool = False) -> LevelChange | None:
        if not info.low <= value <= info.high:
            self.suspect += 1
            return None
        key = (info, exercise)
        dets = self._detectors.get(key)
        if dets is None:
            dets = self._detectors[key] = detectors_for(info, self.registry)
        if not dets:
            return None
        best = Verdict(0)
        best_name = ""
        for name, det in dets:
            v = det.update(t, value)
            if v.level > best.level:
                best, best_name = v, name
        st = self._site(info.site, exercise)
        ch = f"{info.device}/{info.channel}"
        old = st.channels.get(ch)
        if old is not None and old[0] == best.level:
            return None
        if old is None and best.level == 0:
            st.channels[ch] = (0, "", {})
            return None
        st.channels[ch] = (best.level, best.reason, dict(best.evidence, detector=best_name))
        new_level = max(lvl for lvl, _, _ in st.channels.values())
        if new_level == st.level:
            return None
        previous, st.level = st.level, new_level
        # The channel that now holds the site level explains it.
        lead, (lvl, reason, evidence) = max(st.channels.items(), key=lambda kv: kv[1][0])
        why = f"{lead}: {reason}" if lvl else "all channels back to normal"
        return LevelChange(info.site, t, new_level, previous, why, {"channel": lead, **evidence}, exercise)
