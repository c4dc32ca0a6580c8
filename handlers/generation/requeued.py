"""Streams a worker has begun answering, marked where every worker of its version sees them.

TorchServe 0.12 hands the jobs of a worker it scales down back to the version's queue
(BatchAggregator.sendError without a request: handleErrorJob), and another worker takes each one
up from its start. For a stream whose first chunks already went out, that worker would write the
whole answer again after them, in the same response. So a worker marks each stream when its first
chunk goes and unmarks it at its end; a worker handed a stream marked by another ends it at once
(its last chunk, finish_reason "cancelled") instead of answering it twice.

The marks are empty files named by TorchServe's request id (a UUID), in one folder of the
version's model directory, which TorchServe unpacks once for all of the version's workers.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger(__name__)

SAFE_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


class StreamMarks:
    def __init__(self, directory: str):
        self.held: set[str] = set()  # marked by this worker
        try:
            os.makedirs(directory, exist_ok=True)
            self.directory: str | None = directory
        except OSError as e:  # a read-only model directory: a re-queued stream is answered again
            logger.warning("transerve: no stream marks in %s (%s)", directory, e)
            self.directory = None

    def _path(self, rid: str) -> str | None:
        return os.path.join(self.directory, rid) if self.directory and SAFE_ID.fullmatch(rid) else None

    def begun(self, rid: str) -> None:
        if rid in self.held or (path := self._path(rid)) is None:
            return
        self.held.add(rid)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            logger.warning("transerve: cannot mark stream %s: %s", rid, e)

    def ended(self, rid: str) -> None:
        if rid not in self.held:
            return
        self.held.discard(rid)
        if (path := self._path(rid)) is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def elsewhere(self, rid: str) -> bool:
        """Begun by another worker of this version: TorchServe took it from that one."""
        path = self._path(rid)
        return rid not in self.held and path is not None and os.path.exists(path)
