"""One way to wait: poll a check until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, fail: Callable[[], BaseException], interval: float = 0.5) -> T:
    """check() every `interval` seconds until it returns something true, which is returned; once
    `timeout` seconds have passed without that, raise fail(). The check runs at least once, and
    may itself raise to stop the wait early (a process that died, say)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise fail()
        time.sleep(interval)
