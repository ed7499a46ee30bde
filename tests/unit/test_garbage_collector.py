"""A started service keeps what it holds for good out of the collector's passes, and still
collects the garbage its requests leave."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.service import settle_garbage_collector


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def settled() -> Iterator[None]:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.unfreeze()  # as a process that has not settled yet (another test may have started an app)
    settle_garbage_collector(10_000)
    yield
    gc.set_threshold(*threshold)
    if not frozen:
        gc.unfreeze()


def test_what_the_process_holds_at_start_is_out_of_the_collectors_passes(settled: None) -> None:
    # Modules, classes and functions loaded so far: tens of thousands of objects.
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[0] == 10_000


def test_a_process_settles_once(settled: None) -> None:
    frozen = gc.get_freeze_count()
    _Node()  # something new, held by nobody but itself
    settle_garbage_collector(700)  # a second app started in the same process
    assert gc.get_freeze_count() == frozen
    assert gc.get_threshold()[0] == 10_000


def test_garbage_made_after_the_start_is_still_collected_without_being_asked(
    settled: None,
) -> None:
    freed = 0

    def count(_: object) -> None:
        nonlocal freed
        freed += 1

    refs = []
    for _ in range(50_000):  # several young-generation thresholds' worth of cycles
        node = _Node()
        refs.append(weakref.ref(node, count))
        del node
    assert freed >= 30_000
