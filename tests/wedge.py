"""Wedge a consumer group on the tansu broker, so tests can check that chronoq heals.

tansu 0.6.0 (the local and test broker) keeps a member as the leader of a *forming* group after
that member has left it (LeaveGroup). Every other member, present or future, is then a follower
whose SyncGroup is answered REBALANCE_IN_PROGRESS until the leader sends the assignment, which
never comes: no member of the group gets a partition again until the broker restarts. Other
groups are not affected. See docs/tansu-group-wedge.md.

Run ``python -m tests.wedge [BROKER_LOG]`` to reproduce it on a broker of its own.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from kafka import KafkaConsumer

#: The test suite's group timings (tests/conftest.py); a healthy group then assigns in ~3 s.
GROUP_TIMINGS = dict(session_timeout_ms=6000, heartbeat_interval_ms=1200, max_poll_interval_ms=10000)

#: A fresh member that has no partitions after this long (~3 healthy joins) is in a wedged group.
VERIFY_SECONDS = 10.0


def member(bootstrap: str, topic: str, group: str, client_id: str) -> KafkaConsumer:
    """A consumer-group member on ``topic``; it joins on its first poll."""
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TIMINGS,
    )


def poll_until(consumer: KafkaConsumer, done: Callable[[], bool], seconds: float) -> bool:
    """Poll ``consumer`` (which drives its group join) until ``done()``; False after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        consumer.poll(timeout_ms=100, max_records=1)
    return True


def assigned_within(
    bootstrap: str, topic: str, group: str, seconds: float, client_id: str = "wedge-probe"
) -> float | None:
    """Seconds a fresh member of ``group`` took to get partitions, or None if it got none in ``seconds``."""
    probe = member(bootstrap, topic, group, client_id)
    try:
        started = time.monotonic()
        if poll_until(probe, lambda: bool(probe.assignment()), seconds):
            return time.monotonic() - started
        return None
    finally:
        # A follower leaving a wedged group leaves it wedged (the gone leader stays leader).
        probe.close(autocommit=False)


def wedge_group(bootstrap: str, topic: str, group: str, timeout: float = 60.0) -> None:
    """Leave ``group`` wedged: from now on no member of it gets a partition (other groups are fine).

    The group's leader leaves in the middle of a rebalance:

    1. member L joins the group alone, is elected leader and gets every partition (group formed);
    2. member J sends its first JoinGroup: a rebalance starts, the group is forming, L still leader;
    3. L leaves (LeaveGroup) before it rejoins: tansu drops L from the members but keeps it leader;
    4. J leaves too; the group stays forming under a leader that is gone.

    The group must have no live member (a live leader would finish the rebalance). ``timeout``
    bounds steps 1-2; then a fresh member is checked to get nothing for ``VERIFY_SECONDS``. About
    17 s in all. Raises AssertionError when the group could not be wedged.
    """
    with ExitStack() as cleanup:
        leader = member(bootstrap, topic, group, "wedge-leader")
        cleanup.callback(leader.close, autocommit=False)  # a no-op once closed
        joiner = member(bootstrap, topic, group, "wedge-joiner")  # joins on its first poll only
        cleanup.callback(joiner.close, autocommit=False)
        deadline = time.monotonic() + timeout
        if not poll_until(leader, lambda: bool(leader.assignment()), timeout):
            raise AssertionError(f"wedge: the first member of {group} got no partitions in {timeout:.0f}s")
        if not leader._coordinator._is_leader:
            # Only a leader that leaves wedges the group; a follower leaving is handled fine.
            raise AssertionError(f"wedge: {group} has another leader (a live member?)")
        # The coordinator hands out a member id in its answer to the first JoinGroup, which has
        # started the rebalance. The leader is not polled from now on, so it cannot rejoin.
        if not poll_until(joiner, lambda: bool(joiner.group_metadata().member_id), deadline - time.monotonic()):
            raise AssertionError(f"wedge: the second member of {group} never reached the coordinator")
        leader.close(autocommit=False)  # LeaveGroup while the group is forming: the wedge
    took = assigned_within(bootstrap, topic, group, VERIFY_SECONDS)
    if took is not None:
        raise AssertionError(f"wedge: {group} is not wedged (a fresh member got partitions in {took:.1f}s)")

def _outcome(took: float | None) -> str:
    """What a 30 s probe of a group saw."""
    return "no partitions in 30 s" if took is None else f"partitions after {took:.1f}s"


def main(argv: list[str]) -> int:
    """Reproduce the wedge on a broker of our own; exit 0 when it did."""
    import subprocess

    import kafka
    from kafka.admin import KafkaAdminClient, NewTopic

    from common.launch.broker import LocalBroker, tansu_binary

    # RUST_LOG=warn,tansu_broker::coordinator=debug and a log path show the coordinator's decisions.
    broker = LocalBroker(log_path=Path(argv[0]) if argv else None).start()
    try:
        tansu = subprocess.run([tansu_binary(), "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{tansu} on {broker.bootstrap}, kafka-python {kafka.__version__}")
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            admin.create_topics([NewTopic("wedge-demo", 3, 1)])
        finally:
            admin.close()
        started = time.monotonic()
        wedge_group(broker.bootstrap, "wedge-demo", "wedged")
        print(f"wedge_group: the leader left mid-rebalance; verified, {time.monotonic() - started:.1f}s in all")
        other = assigned_within(broker.bootstrap, "wedge-demo", "healthy", 30.0)
        print(f"another group, fresh member: {_outcome(other)}")
        wedged = assigned_within(broker.bootstrap, "wedge-demo", "wedged", 30.0)
        print(f"the wedged group, fresh member: {_outcome(wedged)}")
    finally:
        broker.stop()
    reproduced = other is not None and wedged is None
    print("REPRODUCED: the group is wedged" if reproduced else "NOT reproduced")
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
