"""The job lifecycle as pure functions: which statuses exist, which are terminal, and whether an
update is newer than what the database holds (docs/architecture.md, invariant 6: status never
moves backwards)."""

from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    #: A workflow's task whose dependencies have not all settled: nothing dispatches it until
    #: the last one does (common/core/workflow_release.py), which makes it SCHEDULED or SKIPPED.
    WAITING = "WAITING"
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    #: Not run, by a policy: an occurrence whose previous one was still running (overlap skip),
    #: or a workflow's task whose run_if did not hold.
    SKIPPED = "SKIPPED"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED})
#: A job in one of these has not started its current attempt, so it can still be cancelled.
CANCELLABLE = frozenset({JobStatus.WAITING, JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RETRYING})
#: Statuses an executor may report in an update message.
REPORTABLE = frozenset({JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.SUCCESS, JobStatus.FAILED})

# Within one attempt a job goes RUNNING, then RETRYING or a terminal status.
_PHASE = {
    JobStatus.WAITING: 0,
    JobStatus.SCHEDULED: 0,
    JobStatus.QUEUED: 0,
    JobStatus.RUNNING: 1,
    JobStatus.RETRYING: 2,
    JobStatus.SUCCESS: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELLED: 3,
    JobStatus.SKIPPED: 3,
}


def is_terminal(status: JobStatus | str) -> bool:
    """SUCCESS, FAILED, CANCELLED and SKIPPED never change again (except by a rerun)."""
    return JobStatus(status) in TERMINAL


def progress_key(status: JobStatus | str, attempt: int) -> tuple[int, int]:
    """Order of a (status, attempt) pair in one dispatch: later attempts win, and within an
    attempt RUNNING < RETRYING < terminal. A QUEUED job with ``attempt`` attempts started sorts
    before the RUNNING message of attempt ``attempt + 1``."""
    return (attempt, _PHASE[JobStatus(status)])


def should_apply(
    *,
    current_status: JobStatus | str,
    current_token: int,
    current_attempts: int,
    update_status: JobStatus | str,
    update_token: int,
    update_attempt: int,
) -> bool:
    """Whether an executor's update moves the job row forward.

    Ignored when the job is terminal, when the update belongs to an older dispatch (fencing
    token), or when it is not newer than what the row already shows (duplicate or late)."""
    if is_terminal(current_status) or update_token != current_token:
        return False
    return progress_key(update_status, update_attempt) > progress_key(current_status, current_attempts)
