"""The response chain: from a site's level change to the people who must act.

The pure alert engine (policy, model, state machine, zero reports), the chain that runs it
with timers, CAP 1.2, notifiers, the dispatcher and its outbox, the alert log.
"""
