"""The front door: the ``geowarn`` command, the daemon's composition root, worker processes
and their supervision, the event-time judge shared by the live detection process and replay,
the demo and its embedded broker.

The top floor: it may import every other room; no other room imports it.
"""
