"""Pure parts of the projection: how each event changes the read model (as compact ops the
apply script executes), and the arithmetic of the answers (ranking, industry statistics,
engagement classification). No I/O here.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import singledispatch
from typing import Any

from shared import events as ev
from shared.scoring import ScoringModel

DISPLAY_CAP = 500
# Network-size buckets of /industries and the dashboard: roughly logarithmic, as degrees are.
SIZE_BUCKETS = (
    (0, 0, "0"),
    (1, 9, "1-9"),
    (10, 49, "10-49"),
    (50, 99, "50-99"),
    (100, 249, "100-249"),
    (250, 499, "250-499"),
    (500, 999, "500-999"),
    (1000, 4999, "1000-4999"),
    (5000, None, "5000+"),
)

# An event becomes ops on the members it concerns: (member, [kind, *args]). Each member's ops
# run in one script call on that member's keys (steps.lua's apply_members), which sees each
# as [event_id, ts, source, offset, kind, *args] (`Applied.full_ops`).
MemberOp = tuple[str, list[Any]]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ cost 2 us per event
class Applied:
    event_id: str
    ts: float
    ops: list[MemberOp]
    # Read-your-writes (`?after=`) of an accepted invitation means its connection is decided
    # too: the acceptance awaits the decision, and the decision settles its cause.
    awaits_decision: bool = False
    settles: str | None = None
    # Where the event is in the log: its partition and log epoch, and its offset.
    source: str = ""
    offset: int = 0

    def full_ops(self) -> list[MemberOp]:
        """Each op with the event's id, time and place in the log before it."""
        head = [self.event_id, self.ts, self.source, self.offset]
        return [(m, [*head, *op]) for m, op in self.ops]


def to_ops(
    envelope: ev.Envelope,
    event: ev.Event,
    scoring: ScoringModel,
    source: str = "",
    offset: int = 0,
) -> Applied:
    """The event's per-member ops. Each carries where the event is in the log (`source`, the
    partition and its log epoch, and `offset`): a member's ops from one partition are
    applied in offset order only once, so a replica that stalled and lost the partition
    cannot re-apply an old add after a newer remove. No event has two ops for one member."""
    eid, ts = str(envelope.event_id), envelope.occurred_at.timestamp()
    decision = isinstance(event, ev.ConnectionAccepted | ev.ConnectionRejected)
    return Applied(
        eid,
        ts,
        _ops(event, envelope.occurred_at, scoring),
        awaits_decision=isinstance(event, ev.InvitationAccepted),
        settles=envelope.causation_id if decision else None,
        source=source,
        offset=offset,
    )


@singledispatch
def _ops(event: ev.Event, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return []  # no read-model effect; the event is still marked as applied


# Grouping keys stored beside the profile, so search filters compare on the server.
FILTER_KEYS = {"industry": "ki", "location": "kl", "employer": "ke", "title": "kt"}


def _profile(event: ev.MemberRegistered | ev.MemberProfileUpdated) -> dict[str, str]:
    fields = {f: getattr(event, f) for f in ev.PROFILE_FIELDS if getattr(event, f) is not None}
    for field, key in FILTER_KEYS.items():
        if field in fields:
            fields[key] = ev.grouping_key(fields[field])
    return fields


@_ops.register
def _(event: ev.MemberRegistered, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.member_id, ["reg", _profile(event)])]


@_ops.register
def _(event: ev.MemberProfileUpdated, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.member_id, ["upd", _profile(event)])]


@_ops.register
def _(event: ev.MemberDeactivated, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.member_id, ["deact"])]


@_ops.register
def _(event: ev.ConnectionAccepted, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    a, b = event.member_a, event.member_b
    since = str(int(at.timestamp()))  # whole seconds, as text (steps.lua keeps it in `ca`)
    return [(a, ["c+", b, since]), (b, ["c+", a, since])]  # and each follows the other


@_ops.register
def _(event: ev.ConnectionRemoved, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    a, b = event.member_a, event.member_b
    return [(a, ["c-", b]), (b, ["c-", a])]


@_ops.register
def _(event: ev.FollowStarted, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.follower, ["fg+", event.followee]), (event.followee, ["fw+", event.follower])]


@_ops.register
def _(event: ev.FollowStopped, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.follower, ["fg-", event.followee]), (event.followee, ["fw-", event.follower])]


@_ops.register
def _(event: ev.MemberBlocked, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.blocker, ["bl+", event.blocked]), (event.blocked, ["blby+", event.blocker])]


@_ops.register
def _(event: ev.MemberUnblocked, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.blocker, ["bl-", event.blocked]), (event.blocked, ["blby-", event.blocker])]


@_ops.register
def _(event: ev.ConnectionListed, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.owner, ["l+", event.list_name, event.member_id])]


@_ops.register
def _(event: ev.ConnectionUnlisted, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.owner, ["l-", event.list_name, event.member_id])]


@_ops.register
def _(event: ev.InvitationSent, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    inv = event.invitation_id
    return [
        (event.recipient, ["ir+", inv, event.sender]),
        (event.sender, ["is+", inv, event.recipient]),
    ]


def _finished(event: ev.InvitationEvent, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    inv = event.invitation_id
    if event.hidden_from_sender:  # still pending among what the sender sent
        return [(event.recipient, ["ir-", inv])]
    return [(event.recipient, ["ir-", inv]), (event.sender, ["is-", inv])]


for _finish_type in (
    ev.InvitationAccepted,
    ev.InvitationDeclined,
    ev.InvitationWithdrawn,
    ev.InvitationExpired,
):
    _ops.register(_finish_type)(_finished)


@_ops.register
def _(event: ev.EngagementRecorded, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    contribution = scoring.contribution(event.kind, at)
    congratulated = 1 if event.kind == "congratulate" else 0
    return [
        (event.actor, ["e", event.target, contribution, congratulated]),
        (event.target, ["e", event.actor, contribution, 0]),
    ]


@_ops.register
def _(event: ev.MilestoneAnnounced, at: datetime, scoring: ScoringModel) -> list[MemberOp]:
    return [(event.member_id, ["ms", event.kind, event.detail or ""])]


def industry_moves(
    results: dict[str, tuple[str, str, int, int]],
) -> tuple[dict[str, list[list[Any]]], dict[str, tuple[str, int]]]:
    """From each member's (counted industry, industry now, degree, version): the
    per-industry updates ([member, degree or -1 to leave, version]) and the members whose
    counted industry changes (-> (industry now, version)). The version is the member's
    change count: an industry keeps the newest it applied, so a late, older snapshot (a
    stalled replica) changes nothing."""
    moves: dict[str, list[list[Any]]] = {}
    recount: dict[str, tuple[str, int]] = {}
    for m, (counted, now, degree, version) in results.items():
        if counted and counted != now:
            moves.setdefault(counted, []).append([m, -1, version])
        if now:
            moves.setdefault(now, []).append([m, degree, version])
        if counted != now:
            recount[m] = (now, version)
    return moves, recount


# --- answers ---------------------------------------------------------------------------------


def connections_display(count: int) -> str:
    return f"{DISPLAY_CAP}+" if count > DISPLAY_CAP else str(count)


def normalise(text: str | None) -> str:
    return ev.grouping_key(text or "")


@dataclass(frozen=True)
class Filters:
    industry: str | None = None
    location: str | None = None
    employer: str | None = None
    title: str | None = None

    def active(self) -> bool:
        return any(vars(self).values())

    def keys(self) -> list[str]:
        """The filters as grouping keys, in FILTER_KEYS order ('' for none)."""
        return [ev.grouping_key(getattr(self, f) or "") for f in FILTER_KEYS]

    def match(self, profile: dict[str, str | None]) -> bool:
        """Industry, location and employer match whole (case/spacing-insensitive); title by
        containment ('engineer' finds 'Staff Engineer')."""
        for field in ("industry", "location", "employer"):
            wanted = getattr(self, field)
            if wanted and normalise(wanted) != normalise(profile.get(field)):
                return False
        return not (self.title and normalise(self.title) not in normalise(profile.get("title")))


# People you may know: mutual connections, times a boost for each profile field shared.
BOOSTS = {"industry": 1.25, "employer": 1.5, "location": 1.25}
MAX_BOOST = BOOSTS["industry"] * BOOSTS["employer"] * BOOSTS["location"]


def rank_suggestions(
    me: Mapping[str, str | None],
    mutual_counts: Counter[str],
    profiles: dict[str, dict[str, str | None]],
    limit: int,
) -> list[tuple[str, int, float, list[str]]]:
    """People you may know: by mutual connections, boosted for a shared industry, employer,
    location. Returns (member, mutual count, score, reasons) best first, ties by id."""
    ranked = []
    for candidate, mutual in mutual_counts.items():
        profile = profiles.get(candidate, {})
        reasons = [
            f for f in BOOSTS if me.get(f) and normalise(me.get(f)) == normalise(profile.get(f))
        ]
        boost = 1.0
        for reason in reasons:
            boost *= BOOSTS[reason]
        ranked.append((candidate, mutual, mutual * boost, reasons))
    ranked.sort(key=lambda r: (-r[2], -r[1], r[0]))
    return ranked[:limit]


def average(connections: int, members: int) -> float:
    """How an industry's (or the network's) average is computed: the sum of its members'
    degrees over its member count, to 2 decimals. Each connection counts once per side."""
    return round(connections / members, 2) if members else 0.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


@dataclass(frozen=True)
class DegreeFigures:
    members: int
    median: float
    distribution: dict[str, int]

    @classmethod
    def of(cls, histogram: Mapping[int, int]) -> DegreeFigures:
        """From how many counted members have each degree: the member count, the median
        degree (of the middle two when even, as `median` of every degree) and the size
        buckets, in O(distinct degrees)."""
        counts = sorted((d, n) for d, n in histogram.items() if n > 0)
        members = sum(n for _, n in counts)
        distribution = {label: 0 for _, _, label in SIZE_BUCKETS}
        for d, n in counts:
            distribution[bucket_of(d)] += n
        if not members:
            return cls(0, 0.0, distribution)
        middle, seen = [], 0  # the degrees at ranks (members - 1) // 2 and members // 2
        ranks = ((members - 1) // 2, members // 2)
        for d, n in counts:
            middle += [d for rank in ranks if seen <= rank < seen + n]
            seen += n
        return cls(members, median([float(d) for d in middle]), distribution)


def bucket_of(count: int) -> str:
    for low, high, label in SIZE_BUCKETS:
        if count >= low and (high is None or count <= high):
            return label
    raise ValueError(count)


@dataclass(frozen=True)
class PairEngagement:
    other: str
    stored: float
    last: datetime | None
    connected_at: datetime | None


def classify(
    pairs: Iterable[PairEngagement], scoring: ScoringModel, now: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Engaged, top, stale and reach-out lists of one member's connections."""
    engaged: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    reach_out: list[dict[str, Any]] = []
    scored: list[dict[str, Any]] = []
    for p in pairs:
        score = scoring.current(p.stored, now)
        item: dict[str, Any] = {
            "member_id": p.other,
            "score": round(score, 4),
            "last_interaction": p.last.isoformat() if p.last else None,
        }
        if p.stored > 0:
            scored.append(item)
        if scoring.is_engaged(p.stored, p.last, now):
            engaged.append(item)
        if p.connected_at is not None and scoring.is_stale(p.connected_at, p.last, now):
            stale.append(item)
        if scoring.needs_reach_out(p.stored, p.last, now):
            reach_out.append(item)
    by_score = sorted(scored, key=lambda i: (-i["score"], i["member_id"]))
    return {
        "engaged": sorted(engaged, key=lambda i: (-i["score"], i["member_id"])),
        "top": by_score[:10],
        "stale": sorted(stale, key=lambda i: i["member_id"]),
        "reach_out": sorted(reach_out, key=lambda i: (-i["score"], i["member_id"])),
    }
