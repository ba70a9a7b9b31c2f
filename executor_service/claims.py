"""Start claims, taken in batches shortly before the attempts are due.

Each waiting attempt sits in a heap by due time, then priority (highest first). When the first
one is due within half of ``claim_ahead`` seconds, a task on the event loop takes every attempt
due within ``claim_ahead`` and claims them all with one statement
(:func:`common.core.store.claim_starts`) on a database thread, so that at the fire instant the
answer is already there and the loop never waits on the database. An attempt already past its
misfire grace when its turn comes is failed as missed instead of claimed.

The claim reads what each attempt runs from its row (type, payload, tenant), never from the
message. On the same database thread, right after the claim, each claimed attempt is prepared
(``prepare``: its secrets revealed, its payload loaded, its handler resolved), with the signing
secrets of its tenant (:mod:`executor_service.tenants`, read in the claim's transaction when
not cached): the fire then only runs it."""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import time
from concurrent.futures import Executor
from datetime import datetime
from typing import Callable, Generic, TypeVar

from common.core import store
from common.core.messages import DispatchMessage
from common.core.store import AttemptKey, ClaimedRow, attempt_key
from common.infra import clock
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable
from common.infra.retry import FIRE_PATH, GaveUp, retry

from executor_service.metrics import CLAIM_BATCH, CLAIM_SECONDS
from executor_service.tenants import Loaded, Tenants

log = logging.getLogger(__name__)

#: Pause after a claim, so that the attempts due next gather into one statement.
BATCH_WINDOW = 0.005
#: Largest batch in one statement.
BATCH_MAX = 2000

#: What the claimer makes of a claimed attempt (the runner's run of it).
R = TypeVar("R")


class Claim(enum.Enum):
    """What became of an attempt's start claim."""

    CLAIMED = "claimed"          # it is this executor's to start
    SKIPPED = "skipped"          # cancelled, finished or superseded meanwhile: it must not start
    MISSED = "missed"            # past its misfire grace: failed without starting
    UNAVAILABLE = "unavailable"  # the database stayed away; the scanner re-dispatches it later


def missed(message: DispatchMessage, now: datetime) -> str | None:
    """The error of ``message``'s attempt when at ``now`` it is past its misfire grace (it must
    then fail without running), or None."""
    grace = message.misfire_grace_seconds
    if grace is None:
        return None
    late = (now - message.execute_at).total_seconds()
    return f"missed: {late:.1f}s late, grace {grace:g}s" if late > grace else None


class _Waiting:
    """A heap entry: an attempt by due time, and of those due at the same instant the higher
    priority first (smaller than a tuple with a tie-breaker). So a batch is claimed, and its
    answers handed to the waiting fires, in that order, and a batch cut at ``BATCH_MAX``
    leaves the lower priorities for the next statement."""

    __slots__ = ("at", "message")

    def __init__(self, at: float, message: DispatchMessage) -> None:
        self.at = at
        self.message = message

    def __lt__(self, other: "_Waiting") -> bool:
        return self.at < other.at or (self.at == other.at and self.message.priority > other.message.priority)


class Claims(Generic[R]):
    """The claim-ahead queue of one executor. Use on its event loop only. ``prepare`` turns a
    claimed attempt and its row into what the runner fires; it runs on the database thread
    and must not raise (a run that cannot happen carries its problem instead)."""

    def __init__(
        self, settings: Settings, executor_id: str, database: Executor, tenants: Tenants,
        prepare: Callable[[DispatchMessage, ClaimedRow], R],
    ) -> None:
        self.settings = settings
        self.executor_id = executor_id
        self.ahead = settings.claim_ahead_seconds
        self._database = database
        self.tenants = tenants
        self._prepare = prepare
        self._heap: list[_Waiting] = []
        self._results: dict[AttemptKey, asyncio.Future[tuple[Claim, R | None]]] = {}
        self._changed = asyncio.Event()
        self._closed = False
        self.batches = 0
        #: Why an attempt was failed as missed, as written to the database (for its update).
        self._missed: dict[AttemptKey, str] = {}

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, message: DispatchMessage) -> None:
        """Queue ``message`` for its claim ``claim_ahead`` seconds before it is due."""
        heapq.heappush(self._heap, _Waiting(message.execute_at.timestamp(), message))
        if self._heap[0].message is message:
            self._changed.set()

    async def result(self, message: DispatchMessage) -> tuple[Claim, R | None]:
        """Wait for ``message``'s claim (normally taken already) and forget it: the outcome,
        and what ``prepare`` made of the claimed row (None unless CLAIMED)."""
        key = attempt_key(message)
        future = self._results.get(key)
        if future is None:
            future = self._results[key] = asyncio.get_running_loop().create_future()
            self._changed.set()  # due now: the claimer takes it at once
        try:
            return await future
        finally:
            self._results.pop(key, None)

    def missed_error(self, message: DispatchMessage) -> str:
        """The error ``message``'s attempt was failed with as missed (once; after its claim)."""
        return self._missed.pop(attempt_key(message), "missed")

    def take_unclaimed(self) -> list[DispatchMessage]:
        """Stop claiming; return the attempts whose claim was not taken (to hand back)."""
        self._closed = True
        self._changed.set()
        left = [entry.message for entry in self._heap]
        self._heap.clear()
        for message in left:
            future = self._results.pop(attempt_key(message), None)
            if future is not None and not future.done():
                future.set_result((Claim.SKIPPED, None))
        return left

    async def run(self) -> None:
        """The claimer: claim what comes due, batch after batch, until closed."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            due = self._take_due()
            if not due:
                self._changed.clear()
                # Woken at half the lead: each statement then claims about half a lead of
                # attempts (a few statements a second at any rate, not one per attempt).
                wait = self._heap[0].at - self.ahead / 2 - time.time() if self._heap else 1.0
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=max(wait, 0.0005))
                except asyncio.TimeoutError:
                    pass
                continue
            results = await loop.run_in_executor(self._database, self._claim, due)
            self.batches += 1
            for message, outcome in zip(due, results):
                key = attempt_key(message)
                future = self._results.get(key)
                if future is None:
                    future = self._results[key] = loop.create_future()
                if not future.done():
                    future.set_result(outcome)
            # A short pause lets the attempts due next gather into one statement.
            await asyncio.sleep(BATCH_WINDOW)

    def _take_due(self) -> list[DispatchMessage]:
        # By due time: an attempt whose fire came before its claim (it arrived late) is due,
        # so it is at the head too.
        now = time.time()
        if not self._heap or (self._heap[0].at > now + self.ahead / 2):
            return []
        horizon = now + self.ahead
        due: list[DispatchMessage] = []
        while self._heap and len(due) < BATCH_MAX and self._heap[0].at <= horizon:
            due.append(heapq.heappop(self._heap).message)
        return due


    def _claim(self, messages: list[DispatchMessage]) -> list[tuple[Claim, R | None]]:
        """On a database thread: one transaction for the batch, retried while the database is
        away for up to half a lease; then each claimed attempt is prepared, here too."""
        def run() -> tuple[dict[AttemptKey, ClaimedRow], set[AttemptKey], Loaded]:
            now = clock.utcnow()
            errors = {attempt_key(m): error for m in messages if (error := missed(m, now)) is not None}
            wanted = [m for m in messages if attempt_key(m) not in errors]
            with session_scope(self.settings) as session:
                claimed = store.claim_starts(
                    session, wanted, executor=self.executor_id, now=now, lease=self.settings.lease_seconds,
                )
                # In the same transaction: a retry after the database went away redoes both.
                loaded = self.tenants.load(session, {row.tenant for row in claimed.values()}, now=now)
                failed = set()
                for m in messages:
                    error = errors.get(attempt_key(m))
                    if error is not None and store.fail_unstarted(session, m, error=error, now=now):
                        failed.add(attempt_key(m))
                        self._missed[attempt_key(m)] = error
            return claimed, failed, loaded

        started = time.perf_counter()
        try:
            claimed, failed, loaded = retry(
                run, on=DatabaseUnavailable, backoff=FIRE_PATH, give_up_after=self.settings.lease_seconds / 2,
                what=f"start claim of {len(messages)} attempts", logger=log,
            )
        except GaveUp as exc:
            log.warning("%s; the scanner re-dispatches them when their leases run out", exc)
            return [(Claim.UNAVAILABLE, None)] * len(messages)
        finally:
            CLAIM_SECONDS.observe(time.perf_counter() - started)  # on the database thread
        CLAIM_BATCH.observe(len(messages))
        self.tenants.accept(loaded)
        out: list[tuple[Claim, R | None]] = []
        for message in messages:
            key = attempt_key(message)
            row = claimed.get(key)
            if row is not None:
                out.append((Claim.CLAIMED, self._prepare(message, row)))
            else:
                out.append((Claim.MISSED if key in failed else Claim.SKIPPED, None))
        return out
