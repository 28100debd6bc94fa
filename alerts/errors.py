"""The response chain's delivery exception, on its own so that every notifier module can raise
it without importing another (alerts/notifiers.py registers alerts/notifiers_cn.py's notifiers,
and tests/test_layers.py forbids a circle)."""

from __future__ import annotations

__all__ = ["NotifierError"]


class NotifierError(Exception):
    """A delivery that did not happen. ``permanent``: retrying the same message cannot help
    (the receiver rejected it as such); otherwise the dispatcher retries with backoff."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
