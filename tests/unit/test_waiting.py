"""transerve.torchserve.waiting.wait_until: the one deadline loop of the server, the rollout and the tests."""

from __future__ import annotations

import pytest

from transerve.torchserve.waiting import wait_until


def test_returns_the_first_true_result():
    calls = iter([None, 0, "ready", "later"])
    assert wait_until(lambda: next(calls), 5, lambda: AssertionError("no"), interval=0) == "ready"


def test_raises_what_fail_gives_once_the_deadline_passes_and_checks_at_least_once():
    calls = []

    class Late(Exception):
        pass

    with pytest.raises(Late):
        wait_until(lambda: calls.append(1), 0, Late, interval=0)
    assert calls == [1]


def test_a_check_that_raises_stops_the_wait():
    def died():
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(died, 60, lambda: AssertionError("not this"))
