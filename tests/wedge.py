"""Wedge a consumer group on the tansu broker, so tests can check that chronoq heals.

tansu 0.6.0 (the local and test broker) keeps a member as the leader of a *forming* group after
that member has left it (LeaveGroup). Every other member, present or future, is then a follower
whose SyncGroup is answered REBALANCE_IN_PROGRESS until the leader sends the assignment, which
never comes: no member of the group gets a partition again until the broker restarts. Other
groups are not affected. See docs/tansu-group-wedge.md.

The wedge holds only while the coordinator handles the group's requests one at a time. Two
requests for the group that reach the coordinator at the same moment can make it reload the group
from its storage, and the reload drops a leader that is not a member: the group heals. So
:func:`wedge_group` speaks the group protocol itself over plain sockets, one request at a time,
each answered before the next is sent. None of its requests can meet another, and none of them is
still running in the broker when it returns (a consumer that is closed mid-join leaves its
JoinGroup or SyncGroup running in tansu for up to 5 s).

Run ``python -m tests.wedge [BROKER_LOG]`` to reproduce it on a broker of its own.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from kafka import KafkaConsumer

#: The test suite's group timings (tests/conftest.py); a healthy group then assigns in ~3 s.
GROUP_TIMINGS = dict(session_timeout_ms=6000, heartbeat_interval_ms=1200, max_poll_interval_ms=10000)

# Kafka protocol: the API keys and versions wedge_group speaks (the newest without tagged
# fields; tansu 0.6.0 takes JoinGroup 0-9, SyncGroup 0-5, LeaveGroup 0-5) and the error codes
# it expects.
JOIN_GROUP, JOIN_GROUP_VERSION = 11, 5
SYNC_GROUP, SYNC_GROUP_VERSION = 14, 3
LEAVE_GROUP, LEAVE_GROUP_VERSION = 13, 3
NONE, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS, MEMBER_ID_REQUIRED = 0, 25, 27, 79
#: The consumer protocol's assignors, as kafka-python (chronoq's client) offers them.
ASSIGNORS = ("range", "roundrobin")

T = TypeVar("T")


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
    """Seconds a fresh member of ``group`` took to get partitions, or None if it got none in ``seconds``.

    A real consumer, for demonstrations: closed mid-join, it leaves its last JoinGroup or
    SyncGroup running in the broker for a few seconds (not for use just before a test's own
    members join a wedged group)."""
    probe = member(bootstrap, topic, group, client_id)
    try:
        started = time.monotonic()
        if poll_until(probe, lambda: bool(probe.assignment()), seconds):
            return time.monotonic() - started
        return None
    finally:
        # A follower leaving a wedged group leaves it wedged (the gone leader stays leader).
        probe.close(autocommit=False)


# -- the group protocol, spoken directly ------------------------------------------------------


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


class _Answer:
    """Reads the fields of a response in order."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def int16(self) -> int:
        return self._unpack(">h")

    def int32(self) -> int:
        return self._unpack(">i")

    def _raw(self, size: int) -> bytes:
        value, self.at = self.data[self.at:self.at + size], self.at + size
        return value

    def string(self) -> str | None:
        size = self.int16()
        return None if size < 0 else self._raw(size).decode()

    def bytes(self) -> bytes | None:
        size = self.int32()
        return None if size < 0 else self._raw(size)

    def array(self, item: Callable[[], T]) -> list[T]:
        return [item() for _ in range(self.int32())]


@dataclass(frozen=True)
class Joined:
    """The coordinator's answer to a JoinGroup."""

    error: int
    generation: int
    leader: str
    member_id: str
    members: list[str]  # given to the leader only


class _Member:
    """One member of a group that speaks the group protocol itself on its own connection to the
    broker (which, alone, is every group's coordinator). Each request is answered before the
    method returns, so nothing of this member is ever left running in the broker."""

    def __init__(self, bootstrap: str, client_id: str, timeout: float) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.client_id = client_id
        self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._correlation = 0

    def close(self) -> None:
        self._sock.close()

    def _receive(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise AssertionError(f"wedge: the broker closed {self.client_id}'s connection")
            data += chunk
        return data

    def _call(self, api_key: int, version: int, body: bytes) -> _Answer:
        self._correlation += 1
        request = struct.pack(">hhi", api_key, version, self._correlation) + _string(self.client_id) + body
        self._sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", self._receive(4))
        answer = _Answer(self._receive(size))
        if answer.int32() != self._correlation:
            raise AssertionError(f"wedge: {self.client_id} got the answer to another request")
        return answer

    def join(self, group: str, topic: str, member_id: str = "") -> Joined:
        """One JoinGroup, as a consumer of ``topic`` with the suite's group timings."""
        subscription = struct.pack(">h", 0) + _array([_string(topic)]) + _bytes(b"")
        body = (
            _string(group)
            + struct.pack(">ii", GROUP_TIMINGS["session_timeout_ms"], GROUP_TIMINGS["max_poll_interval_ms"])
            + _string(member_id) + _string(None) + _string("consumer")
            + _array([_string(name) + _bytes(subscription) for name in ASSIGNORS])
        )
        answer = self._call(JOIN_GROUP, JOIN_GROUP_VERSION, body)
        answer.int32()  # throttle_time_ms
        error, generation = answer.int16(), answer.int32()
        answer.string()  # protocol_name
        leader, member_id = answer.string() or "", answer.string() or ""
        members = answer.array(lambda: (answer.string() or "", answer.string(), answer.bytes())[0])
        return Joined(error, generation, leader, member_id, members)

    def join_fresh(self, group: str, topic: str) -> Joined:
        """A fresh member's join: a JoinGroup without a member id, which the coordinator answers
        MEMBER_ID_REQUIRED with one, then a JoinGroup with that id."""
        first = self.join(group, topic)
        if first.error != MEMBER_ID_REQUIRED:
            raise AssertionError(f"wedge: {self.client_id}'s first JoinGroup to {group} got error {first.error}")
        return self.join(group, topic, first.member_id)

    def sync(self, group: str, generation: int, member_id: str, assignments: dict[str, bytes]) -> int:
        """One SyncGroup (a leader sends everyone's assignment, a follower none); its error code."""
        body = (
            _string(group) + struct.pack(">i", generation) + _string(member_id) + _string(None)
            + _array([_string(member) + _bytes(assignment) for member, assignment in assignments.items()])
        )
        answer = self._call(SYNC_GROUP, SYNC_GROUP_VERSION, body)
        answer.int32()  # throttle_time_ms
        return answer.int16()

    def leave(self, group: str, member_id: str) -> int:
        """One LeaveGroup for ``member_id``; the error code for that member."""
        body = _string(group) + _array([_string(member_id) + _string(None)])
        answer = self._call(LEAVE_GROUP, LEAVE_GROUP_VERSION, body)
        answer.int32()  # throttle_time_ms
        error = answer.int16()
        members = answer.array(lambda: (answer.string(), answer.string(), answer.int16()))
        return error or next((code for left, _, code in members if left == member_id), UNKNOWN_MEMBER_ID)


def wedge_group(bootstrap: str, topic: str, group: str, timeout: float = 30.0) -> str:
    """Leave ``group`` wedged: from now on no member of it gets a partition (other groups are
    fine) until the broker restarts, as long as no two requests for the group reach the
    coordinator at the same moment (see above). Returns the member id of the leader that left.

    ``group`` must be new (no member, live or expired). Three members, each on its own
    connection, send one request at a time (docs/tansu-group-wedge.md, "The sequence"):

    1. L joins the group alone, is elected leader and sends its assignment (group formed);
    2. J sends its first JoinGroup: a rebalance starts, the group is forming, L still leader;
    3. L leaves (LeaveGroup): tansu drops L from the members but keeps it leader; J leaves too;
    4. check, with the coordinator's own answers: a fresh member P is told that the leader is L,
       a member that the coordinator has confirmed gone, and its SyncGroup is answered
       REBALANCE_IN_PROGRESS. No healthy group, however slow, answers that. P then leaves (a
       follower leaving keeps the wedge).

    About 11 s (tansu holds each JoinGroup ~3 s and a SyncGroup that fails ~5 s). Nothing of it
    is left running in the broker when it returns. ``timeout`` bounds each request. Raises
    AssertionError when the group could not be wedged, with the coordinator's answer.
    """
    with ExitStack() as cleanup:
        leader, joiner, probe = (
            cleanup.enter_context(closing(_Member(bootstrap, f"wedge-{role}", timeout)))
            for role in ("leader", "joiner", "probe")
        )
        formed = leader.join_fresh(group, topic)
        chosen = formed.member_id
        if formed.error != NONE or formed.leader != chosen or formed.members != [chosen]:
            raise AssertionError(
                f"wedge: {group} is not a new group: the first member's JoinGroup got error {formed.error}, "
                f"leader {formed.leader!r}, members {formed.members} (a live member?)"
            )
        # The leader's assignment does not matter (nobody fetches): the topic, no partitions.
        assignment = struct.pack(">h", 0) + _array([_string(topic) + _array([])]) + _bytes(b"")
        if (error := leader.sync(group, formed.generation, chosen, {chosen: assignment})) != NONE:
            raise AssertionError(f"wedge: the leader's SyncGroup to {group} got error {error}")

        rebalance = joiner.join(group, topic)  # the coordinator adds J and starts a rebalance
        if rebalance.error != MEMBER_ID_REQUIRED:
            raise AssertionError(f"wedge: the second member's JoinGroup to {group} got error {rebalance.error}")
        if (error := leader.leave(group, chosen)) != NONE:  # the wedge
            raise AssertionError(f"wedge: the leader's LeaveGroup from {group} got error {error}")
        joiner.leave(group, rebalance.member_id)  # a follower leaving keeps the wedge (J could also expire)

        seen = probe.join_fresh(group, topic)
        if seen.error != NONE or seen.leader != chosen:
            raise AssertionError(
                f"wedge: {group} is not wedged: a fresh member's JoinGroup got error {seen.error} and "
                f"leader {seen.leader!r}, not the departed {chosen!r}"
            )
        if (error := probe.sync(group, seen.generation, seen.member_id, {})) != REBALANCE_IN_PROGRESS:
            raise AssertionError(f"wedge: {group} is not wedged: a fresh member's SyncGroup got error {error}")
        probe.leave(group, seen.member_id)
    return chosen


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
        gone = wedge_group(broker.bootstrap, "wedge-demo", "wedged")
        print(f"wedge_group: the leader {gone} left mid-rebalance; a fresh member is told it still leads; "
              f"{time.monotonic() - started:.1f}s in all")
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
