"""Streaming detectors, data-quality guards and site fusion, all in event time.

A detector is ``update(t, value) -> Verdict`` plus ``snapshot()`` / ``restore()``. Detectors
never read a clock and never do I/O: the same code runs live and in replay.
"""
