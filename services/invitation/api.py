"""HTTP edge of the invitation service: validate, build a command, run it, answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import ConfigDict, Field, StringConstraints

from services.invitation import domain
from services.invitation.deps import InvitationStoreDep
from services.invitation.domain import Invitation, Slice, Status
from shared.api import IdPath, WriteResult
from shared.api import Request as Body
from shared.auth import ActingMember
from shared.commands import Outcome
from shared.domain import NotFound
from shared.errors import ErrorResponse
from shared.events import ID_PATTERN
from shared.text import CleanLines

router = APIRouter(prefix="/invitations", tags=["invitations"])

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
    message: Annotated[str, StringConstraints(max_length=5000), CleanLines(5000)] | None = Field(
        None, examples=["We met at PyCon"]
    )


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
    def from_outcome(cls, outcome: Outcome[Slice], viewer: str) -> InvitationPublic:
        assert outcome.state is not None and outcome.state.invitation is not None
        return cls.from_invitation(outcome.state.invitation, viewer, outcome)

    @classmethod
    def from_invitation(
        cls, inv: Invitation, viewer: str, outcome: Outcome[Slice] | None = None
    ) -> InvitationPublic:
        """As `viewer` may see it: a decline or a block is never shown (`Invitation.shown`)."""
        inv = inv.seen_by(viewer)
        return cls(
            invitation_id=inv.invitation_id,
            status=inv.status,
            sender=inv.sender,
            recipient=inv.recipient,
            message=inv.message,
            sent_at=inv.sent_at,
            updated_at=inv.updated_at,
            **WriteResult.of(outcome.envelopes if outcome else []).model_dump(),
        )


@router.post(
    "",
    status_code=201,
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="Invite a member to connect",
)
async def send_invitation(
    body: InvitationCreate, store: InvitationStoreDep, acting: ActingMember
) -> InvitationPublic:
    """If the recipient already invited you, this accepts their invitation (status `accepted`)."""
    command = domain.SendInvitation(store.new_id(acting, body.to), acting, body.to, body.message)
    return InvitationPublic.from_outcome(await store.run(command), acting)


@router.get(
    "/{invitation_id}",
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="An invitation (sender and recipient only)",
)
async def get_invitation(
    invitation_id: IdPath, store: InvitationStoreDep, acting: ActingMember
) -> InvitationPublic:
    inv = await store.invitation(invitation_id)
    if inv is None or not inv.involves(acting):
        raise NotFound("invitation not found", "invitation_not_found")
    return InvitationPublic.from_invitation(inv, acting)


async def _answer(
    store: InvitationStoreDep,
    command: domain.Accept | domain.Decline | domain.Withdraw | domain.Report,
) -> InvitationPublic:
    return InvitationPublic.from_outcome(await store.run(command), command.actor)


@router.post(
    "/{invitation_id}/accept",
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="Accept (recipient only)",
)
async def accept_invitation(
    invitation_id: IdPath, store: InvitationStoreDep, acting: ActingMember
) -> InvitationPublic:
    """Becomes a connection once the connection service agrees."""
    return await _answer(store, domain.Accept(invitation_id, acting))


@router.post(
    "/{invitation_id}/decline",
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="Decline (recipient only)",
)
async def decline_invitation(
    invitation_id: IdPath, store: InvitationStoreDep, acting: ActingMember
) -> InvitationPublic:
    """The sender is not told."""
    return await _answer(store, domain.Decline(invitation_id, acting))


@router.post(
    "/{invitation_id}/withdraw",
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="Withdraw (sender only)",
)
async def withdraw_invitation(
    invitation_id: IdPath, store: InvitationStoreDep, acting: ActingMember
) -> InvitationPublic:
    """Re-inviting the same member waits out a cooldown."""
    return await _answer(store, domain.Withdraw(invitation_id, acting))


@router.post(
    "/{invitation_id}/report",
    response_model=InvitationPublic,
    responses=ERRORS,
    summary="I don't know this person (recipient only)",
)
async def report_invitation(
    invitation_id: IdPath, store: InvitationStoreDep, acting: ActingMember
) -> InvitationPublic:
    """Declines and counts against the sender; past a threshold the sender cannot invite."""
    return await _answer(store, domain.Report(invitation_id, acting))
