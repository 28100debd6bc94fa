"""Clock health of devices: the names and thresholds that fusion judges by and that the
console, ``/metrics`` and the zero report read back.

Fusion (detectors/fusion.py) counts, per device, readings that came out of order, stamped
ahead of their arrival, or as conflicting duplicates, and reports a ``clock`` event when a
device's clock looks wrong and ``clock_ok`` when it looks right again. The detection worker
saves ``SiteFusion.clock_health()`` in the journal's state under ``CLOCK_HEALTH_KEY`` at each
snapshot and whenever a device's clock health changes; readers on other floors find it there.
This module imports nothing (the console must not load the detectors to read a key).
"""

from __future__ import annotations

#: The journal state key of the detection worker's last ``SiteFusion.clock_health()``.
CLOCK_HEALTH_KEY = "detection.clock_health"
#: A ``clock`` event when this many of a device's last ``CLOCK_WINDOW`` readings came out of
#: order, ahead of their arrival or as conflicting duplicates; ``clock_ok`` when none of its
#: last ``CLOCK_WINDOW`` did.
CLOCK_WINDOW = 50
CLOCK_TROUBLE_AT = 3
#: The kinds of bad time stamp counted per device.
CLOCK_FAULTS = ("out_of_order", "ahead", "conflict")
#: The events' kinds (``LevelChange.kind``): they change no level and go to the alert log,
#: not to the response chain.
CLOCK_KINDS = ("clock", "clock_ok")
