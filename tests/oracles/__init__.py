"""Test oracles of the detectors: batch references and the contract suite's cases.

Only tests use these, so they live here and not in ``geowarn.detectors`` (STYLE habit 3: every
streaming detector has a batch reference and a test that chunked streaming equals batch).
Each batch reference is written apart from the streaming code it checks, with numpy, from the
definitions in the detector's module docstring; it reads only the detector's parameters.

- ``oracles.contract``: ``ContractCase`` and ``reference_latch``, the batch ``LevelLatch``;
- ``oracles.<module>``: the batch reference and ``contract_cases()`` of
  ``geowarn.detectors.<module>`` (threshold, velocity, tangent, inverse_velocity, quality,
  rain, rise).

Tests import them as ``oracles.<module>``: ``tests/`` is on ``sys.path`` under pytest (the
test files have no package), as for ``services``.
"""
