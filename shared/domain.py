"""What every write service's pure domain shares: the errors a rule raises.

A domain error names what went wrong (`code`) and says it in words (`message`); it knows
nothing of HTTP. The HTTP edge maps each kind to a status in one table (`shared.errors`).
This module imports only the standard library, so `services.<x>.domain` stays pure.
"""

from __future__ import annotations


class DomainError(Exception):
    """A rule of the domain said no."""

    default_code = "rejected"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message


class NotFound(DomainError):
    default_code = "not_found"


class Conflict(DomainError):
    default_code = "conflict"


class Forbidden(DomainError):
    default_code = "forbidden"


class Invalid(DomainError):
    default_code = "invalid_request"


class RateLimited(DomainError):
    """A limit over a rolling window; the caller may try again after `retry_after_s`."""

    default_code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code)
        self.retry_after_s = max(1, retry_after_s)


class LocalChange:
    """A change a decision makes to the service's own state that is no event of the catalog
    (a place held for an invitation, one member's side of a connection): folded and
    committed like an event, never published."""


REFUSED_MESSAGE = "you cannot do this"


def refused() -> Forbidden:
    """The one refusal, whatever the reason (an acting member who is not active, the wrong
    party, another member's view): its code and body say nothing about why."""
    return Forbidden(REFUSED_MESSAGE, "not_allowed")


def unknown_member(member_id: str) -> NotFound:
    """What a member that does not exist looks like. A block either way looks the same, so
    the blocked member cannot tell a block from an account that is not there."""
    return NotFound(f"member {member_id} not found", "member_not_found")
