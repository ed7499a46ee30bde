"""The authorization matrix (rapport/authorization.py), checked cell by cell against the four
running services, and complete: every operation of every OpenAPI document has its row."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from rapport.authorization import CALLERS, ROWS
from rapport.client import BlockingClient
from tests.e2e.conftest import Stack
from tests.e2e.driver import Driver, World, request_row
from tests.helpers import TOKEN, poll_until, random_id

pytestmark = pytest.mark.e2e


def test_every_route_of_every_service_has_a_row(stack: Stack) -> None:
    documented = set()
    with BlockingClient(stack.urls, TOKEN) as api:
        specs = {s: api.request(s, "GET", "/openapi.json").json() for s in stack.urls}
    for service, spec in specs.items():
        for path, operations in spec["paths"].items():
            documented |= {(service, method.upper(), path) for method in operations}
    rows = [row.route for row in ROWS]
    assert len(rows) == len(set(rows)), "a route has two rows"
    assert documented - set(rows) == set(), "routes without a row in rapport/authorization.py"
    assert set(rows) - documented == set(), "rows for routes that do not exist"


@pytest.mark.timeout(300)
def test_every_cell_of_the_matrix(stack: Stack) -> None:
    wrong: list[str] = []
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        for row in ROWS:
            w = driver.world(row)
            # `self` last: the refused callers must not have changed anything it relies on.
            for caller in sorted(CALLERS, key=lambda c: c == "self"):
                response = request_row(driver, row, w, caller)
                expected = row.expect[caller]
                if response.status_code != expected:
                    wrong.append(
                        f"{row.method} {row.path} as {caller}: {response.status_code} "
                        f"(expected {expected}) {response.text[:200]}"
                    )
                elif response.status_code in (401, 403):
                    error = response.json()["error"]
                    if response.status_code == 403:  # one refusal body, whatever the reason
                        assert error == {"code": "not_allowed", "message": "you cannot do this"}
                    else:
                        assert error["code"] == "unauthorized"
    assert not wrong, "\n".join(wrong)


# --- a block reveals nothing --------------------------------------------------------------


def _connect(driver: Driver, a: str, b: str) -> str:
    """Connect a and b; the accepted invitation's event, to read after."""
    invitation = driver.invite(a, b)
    accepted = driver.ok("invitation", "POST", f"/invitations/{invitation}/accept", b)
    return str(accepted.json()["event_id"])


def _views(driver: Driver, viewer: str, target: str, after: str) -> dict[str, tuple[int, str]]:
    """What `viewer` gets on every route that names `target`, with `target`'s id masked."""
    fresh = f"after={after}&wait_ms=10000"
    calls = {
        "invite": ("invitation", "POST", "/invitations", {"to": target}),
        "follow": ("connection", "PUT", f"/follows/{target}", None),
        "engage": ("engagement", "POST", "/engagements", {"target": target, "kind": "like"}),
        "profile": ("connection", "GET", f"/members/{target}", None),
        "degree": ("projection", "GET", f"/members/{viewer}/degree/{target}?{fresh}", None),
        "badges": ("projection", "GET", f"/members/{viewer}/degrees?ids={target}&{fresh}", None),
        "paths": ("projection", "GET", f"/members/{viewer}/paths/{target}?{fresh}", None),
        "mutual": ("projection", "GET", f"/members/{viewer}/mutual/{target}?{fresh}", None),
    }
    seen = {}
    # Reads that list members first (an invitation would take them out of suggestions).
    for name, path in (
        ("suggestions", f"/members/{viewer}/suggestions?limit=100&{fresh}"),
        ("search", f"/members/{viewer}/network?degree=3&limit=500&{fresh}"),
    ):
        response = driver.call("projection", "GET", path, viewer)
        seen[name] = (response.status_code, str(target in response.text))
    for name, (service, method, path, body) in calls.items():
        response = driver.call(service, method, path, viewer, body)
        seen[name] = (response.status_code, response.text.replace(target, "<them>"))
    return seen


@pytest.mark.timeout(120)
def test_a_block_looks_like_a_member_that_does_not_exist_on_every_route(stack: Stack) -> None:
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        blocker, blocked, mutual = (f"{r}{random_id(8)}" for r in ("bk", "bd", "mu"))
        nobody = f"zz{random_id(8)}"  # never registered
        for m in (blocker, blocked, mutual):
            driver.register(m)
        first = _connect(driver, blocked, mutual)
        last = _connect(driver, mutual, blocker)
        # After both: each connection may sit on its own partition, applied on its own.
        before = _views(driver, blocked, blocker, f"{first},{last}")
        assert '"degree":2' in before["degree"][1]
        assert before["suggestions"] == (200, "True")  # without the block, they would meet
        block = driver.ok("connection", "POST", f"/blocks/{blocked}", blocker).json()["event_id"]
        plain = _views(driver, blocked, nobody, block)
        # Both sides of the block, compared with a member that does not exist.
        assert _views(driver, blocked, blocker, block) == plain
        assert _views(driver, blocker, blocked, block) == _views(driver, blocker, nobody, block)
    assert plain["invite"][0] == plain["follow"][0] == plain["engage"][0] == 404
    assert plain["profile"][0] == 404
    assert plain["suggestions"] == plain["search"] == (200, "False")


@pytest.mark.timeout(120)
def test_an_invitation_ended_by_a_decline_or_a_block_looks_unanswered_to_its_sender(
    stack: Stack,
) -> None:
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        sender, decliner, blocker, withdrawn_to = (
            f"{r}{random_id(8)}" for r in ("sd", "dc", "bk", "wd")
        )
        for m in (sender, decliner, blocker, withdrawn_to):
            driver.register(m)

        def seen(invitation: str, member: str) -> dict[str, object]:
            body = driver.ok("invitation", "GET", f"/invitations/{invitation}", member).json()
            return {k: body[k] for k in ("status", "updated_at", "message")}

        to_decliner = driver.invite(sender, decliner)
        to_blocker = driver.invite(sender, blocker)
        shown = {i: seen(i, sender) for i in (to_decliner, to_blocker)}
        driver.ok("invitation", "POST", f"/invitations/{to_decliner}/decline", decliner)
        block = driver.ok("connection", "POST", f"/blocks/{sender}", blocker).json()["event_id"]
        # The recipient's block cancels the invitation (the blocker sees it cancelled)...
        poll_until(lambda: seen(to_blocker, blocker)["status"] == "cancelled", timeout=15)
        # ...and its sender, like the sender of the declined one, sees no change at all.
        assert {i: seen(i, sender) for i in shown} == shown
        assert shown[to_decliner]["status"] == "pending"
        sent = driver.ok(
            "projection",
            "GET",
            f"/members/{sender}/invitations?direction=sent&after={block}&wait_ms=10000",
            sender,
        ).json()
        assert {i["invitation_id"] for i in sent["items"]} == {to_decliner, to_blocker}
        again = driver.call("invitation", "POST", "/invitations", sender, {"to": decliner})
        assert again.json()["error"]["code"] == "already_pending"  # as if still pending

        # The other way round: the sender blocks the recipient, who sees a plain withdrawal.
        by_sender = driver.invite(sender, withdrawn_to)
        plain = driver.invite(withdrawn_to, decliner)
        driver.ok("invitation", "POST", f"/invitations/{plain}/withdraw", withdrawn_to)
        driver.ok("connection", "POST", f"/blocks/{withdrawn_to}", sender)
        poll_until(lambda: seen(by_sender, withdrawn_to)["status"] != "pending", timeout=15)
        assert seen(by_sender, withdrawn_to)["status"] == seen(plain, decliner)["status"]


# --- bounded input ------------------------------------------------------------------------


class _AsyncChunks:
    """A body streamed in chunks, without a Content-Length (the async client's kind)."""

    def __init__(self, total: int, size: int = 8192) -> None:
        self.total, self.size = total, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            yield b" " * min(self.size, self.total - sent)
            sent += self.size


def test_bodies_are_bounded_while_streaming_and_json_depth_is_bounded(stack: Stack) -> None:
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        me = f"bb{random_id(8)}"
        driver.register(me)
        json_type = {"Content-Type": "application/json"}

        def post(content: object) -> httpx.Response:
            return api.request(
                "invitation",
                "POST",
                "/invitations",
                member=me,
                content=content,
                headers=json_type,
                check=False,
            )

        # Chunked (no Content-Length): refused once past the limit, not read whole.
        chunked = post(_AsyncChunks(10 * 2**20))
        declared = post(b" " * (65 * 1024))
        deep = post(b'{"to":' + b"[" * 40 + b"]" * 40 + b"}")
        in_string = post(b'{"to":"' + b"[" * 40 + b'"}')
    assert chunked.status_code == declared.status_code == 413
    assert chunked.json()["error"]["code"] == "payload_too_large"
    assert deep.status_code == 400 and "nested deeper" in deep.json()["error"]["message"]
    assert in_string.status_code == 422  # brackets inside a string are not nesting


def test_ids_limits_and_cursors_are_validated_with_clear_errors(stack: Stack) -> None:
    long_id = "a" * 5000
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        me = f"bv{random_id(8)}"
        driver.register(me)
        mine = f"/members/{me}"

        def read(path: str, member: str = me) -> httpx.Response:
            return api.request("projection", "GET", mine + path, member=member, check=False)

        answers = {
            "path id": read(f"/degree/{long_id}"),
            "header id": read("/summary", member=long_id),
            "body id": api.request(
                "invitation", "POST", "/invitations", member=me, json={"to": long_id}, check=False
            ),
            "control id": read("/degree/a%00b"),
            "limit": read(f"/network?limit={10**9}"),
            "cursor": read("/connections?cursor=x%20y"),
            "badges": read(f"/degrees?ids={','.join(['a'] * 101)}"),
        }
    for what, response in answers.items():
        assert 400 <= response.status_code < 500, (what, response.text)
        error = response.json()["error"]
        assert error["code"] and error["message"], what
    assert answers["header id"].json()["error"]["code"] == "invalid_member_id"


def test_text_is_normalised_so_look_alikes_are_one_and_control_characters_are_refused(
    stack: Stack,
) -> None:
    industry = f"Fin{random_id(6)}"
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in industry)
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        plain, lookalike, nul, rtl = (f"tx{random_id(8)}" for _ in range(4))

        def register(member: str, body: dict[str, str]) -> httpx.Response:
            return api.request(
                "connection", "POST", "/members", member=member, json=body, check=False
            )

        first = register(plain, {"name": "Plain", "industry": industry})
        second = register(
            lookalike, {"name": "Look\u200balike", "industry": f" {fullwidth}\u200b "}
        )
        refused = register(nul, {"name": "Nul", "industry": f"Fin\x00{industry}"})
        bidi = register(rtl, {"name": "\u202eevil", "industry": industry})
        shown = api.profile(lookalike).model_dump()
        after = bidi.json()["event_id"]  # registered last
        figures = api.request(
            "projection", "GET", "/industries", params={"after": after, "wait_ms": 10000}
        ).json()["industries"]
    assert first.status_code == second.status_code == bidi.status_code == 201
    assert refused.status_code == 422 and "not allowed" in refused.json()["error"]["message"]
    assert shown["industry"] == industry and shown["name"] == "Lookalike"
    matching = [i for i in figures if i["industry"].casefold() == industry.casefold()]
    assert [i["members"] for i in matching] == [3]  # one industry, not two look-alikes


@pytest.mark.timeout(180)
def test_every_write_refuses_an_acting_member_who_is_not_an_active_member(stack: Stack) -> None:
    writes = [
        row
        for row in ROWS
        if row.method != "GET"
        and row.service != "projection"
        and row.route != ("connection", "POST", "/members")  # registering is how one joins
    ]
    answers: dict[str, set[tuple[int, str]]] = {"deactivated": set(), "unregistered": set()}
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        for row in writes:
            w = driver.world(row)
            ghost = World(f"gh{random_id(8)}", w.peer, w.other, w.invitation_id)
            refused = request_row(driver, row, ghost, "self")
            answers["unregistered"].add((refused.status_code, refused.text))
            driver.ok("connection", "DELETE", f"/members/{w.me}", w.me)
            refused = request_row(driver, row, w, "self")
            answers["deactivated"].add((refused.status_code, refused.text))
    # One answer for every route and both kinds: the plain refusal.
    plain = (403, '{"error":{"code":"not_allowed","message":"you cannot do this"}}')
    assert answers == {"deactivated": {plain}, "unregistered": {plain}}
