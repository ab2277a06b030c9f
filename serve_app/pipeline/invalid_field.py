"""``InvalidField``: the one error for a request field whose value cannot be honoured.

Raised wherever a value is checked (the request schema's rules, the planner,
the model's limits, the output-name rules) and turned into the client's 422
(``serve_app.errors.InvalidRequest``) in one place. It needs neither torch nor
Ray, so the pipeline package raises it too.
"""

from __future__ import annotations


class InvalidField(ValueError):
    """``field`` (the request's name for it) cannot take its value, for ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.field, self.reason))

    def renamed(self, field: str) -> InvalidField:
        """The same reason under another field name (a legacy alias the client used)."""
        return InvalidField(field, self.reason)

    def citing(self, source: str | None) -> InvalidField:
        """The same error, saying where the value came from when the client did not set it."""
        return InvalidField(self.field, f"{self.reason} (value from {source})") if source else self
