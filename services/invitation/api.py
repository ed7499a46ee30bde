"""HTTP edge of the invitation service: validate, build a command, run it, answer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field

from services.invitation import domain
from services.invitation.domain import Status
from services.invitation.store import InvitationStore, Outcome
from shared.api import IdPath, WriteResult
from shared.api import Request as Body
from shared.auth import ActingMember
from shared.errors import ErrorResponse, NotFound
from shared.events import ID_PATTERN

router = APIRouter(prefix="/invitations", tags=["invitations"])


def get_store(request: Request) -> InvitationStore:
    return request.app.state.runtime.store


StoreDep = Annotated[InvitationStore, Depends(get_store)]

ERRORS: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorResponse,
        "description": "Not allowed (wrong party, restricted, or cannot invite)",
    },
    404: {"model": ErrorResponse, "description": "Unknown member or invitation"},
    409: {
        "model": ErrorResponse,
        "description": "Already connected, pending, finished, or in cooldown",
    },
    429: {
        "model": ErrorResponse,
        "description": "Weekly invitation limit reached (see Retry-After)",
    },
}


class InvitationCreate(Body):
    to: str = Field(pattern=ID_PATTERN, examples=["grace"], description="The member to invite")
    # The configured limit (default 300) is checked by the domain; this bound stops abuse early.
    message: str | None = Field(None, max_length=5000, examples=["We met at PyCon"])


class InvitationPublic(WriteResult):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "invitation_id": "5f0c2a9e8b7d4c3f9a1e2d3c4b5a6978",
                    "status": "pending",
                    "sender": "ada",
                    "recipient": "grace",
                    "message": "We met at PyCon",
                    "sent_at": "2026-11-27T09:30:00Z",
                    "updated_at": "2026-11-27T09:30:00Z",
                    "event_id": "0b4f6a44-5f1e-4d59-9a57-1c1d0f3e2b11",
                    "event_ids": ["0b4f6a44-5f1e-4d59-9a57-1c1d0f3e2b11"],
                }
            ]
        }
    )

    invitation_id: str
    status: Status
    sender: str
    recipient: str
    message: str | None = None
    sent_at: datetime
    updated_at: datetime

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> InvitationPublic:
        inv = outcome.invitation
        assert inv is not None
        # System cancellations show as "cancelled" without saying why (a block stays private).
        return cls(
            invitation_id=inv.invitation_id,
            status=inv.status,
            sender=inv.sender,
            recipient=inv.recipient,
            message=inv.message,
            sent_at=inv.sent_at,
            updated_at=inv.updated_at,
            **WriteResult.of(outcome.envelopes).model_dump(),
        )


@router.post(
    "",
    status_code=201,
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="Invite a member to connect",
)
async def send_invitation(
    body: InvitationCreate, store: StoreDep, acting: ActingMember
) -> InvitationPublic:
    """If the recipient already invited you, this accepts their invitation (status `accepted`)."""
    command = domain.SendInvitation(uuid.uuid4().hex, acting, body.to, body.message)
    return InvitationPublic.from_outcome(await store.execute(command))


@router.get(
    "/{invitation_id}",
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="An invitation (sender and recipient only)",
)
async def get_invitation(
    invitation_id: IdPath, store: StoreDep, acting: ActingMember
) -> InvitationPublic:
    inv = await store.invitation(invitation_id)
    if inv is None or not inv.involves(acting):
        raise NotFound("invitation not found", "invitation_not_found")
    return InvitationPublic.from_outcome(Outcome([], inv))


def _answer(
    command: type[domain.Accept | domain.Decline | domain.Withdraw | domain.Report],
    summary: str,
    doc: str,
):  # type: ignore[no-untyped-def]
    async def answer(
        invitation_id: IdPath, store: StoreDep, acting: ActingMember
    ) -> InvitationPublic:
        return InvitationPublic.from_outcome(await store.execute(command(invitation_id, acting)))

    answer.__doc__ = doc
    answer.__name__ = f"{command.__name__.lower()}_invitation"
    return router.post(
        f"/{{invitation_id}}/{command.__name__.lower()}",
        response_model=InvitationPublic,
        responses=ERRORS,
        summary=summary,
    )(answer)


_answer(
    domain.Accept,
    "Accept (recipient only)",
    "Becomes a connection once the connection service agrees.",
)
_answer(domain.Decline, "Decline (recipient only)", "The sender is not told.")
_answer(
    domain.Withdraw, "Withdraw (sender only)", "Re-inviting the same member waits out a cooldown."
)
_answer(
    domain.Report,
    "I don't know this person (recipient only)",
    "Declines and counts against the sender; past a threshold the sender cannot invite.",
)
