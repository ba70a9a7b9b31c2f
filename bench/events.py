"""Live events: how long a job's state change takes to reach the clients of ``GET /api/events``.

A whole system (:class:`bench.system.BenchSystem`: services as processes, PostgreSQL, tansu)
runs noop jobs at ``--rate`` per second for ``--seconds``; ``--streams`` clients follow the
event stream meanwhile. For every event a client gets, the delay is its arrival minus the time
the change was written (``data.at``: the database's clock, on this machine). Prints the delay
by status and, per stream, whether every change of every job arrived, once.

    .venv/bin/python -m bench.events --rate 200 --seconds 10 --streams 2
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime

import requests
import sqlalchemy as sa

from bench.benchlib import print_table
from bench.lateness import percentile, plan
from bench.system import BenchSystem, exit_on_sigterm, insert_jobs, job_row, utc_from_ns
from chronoq.sse import SseParser
from common.core.models import Job

#: The changes of a noop job that runs once: created, dispatched, started, finished.
CHANGES = ("SCHEDULED", "QUEUED", "RUNNING", "SUCCESS")


class Follower(threading.Thread):
    """One client of the stream: every event of the run's jobs, with its arrival time."""

    def __init__(self, url: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.url, self.tag = url, tag
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.events: list[tuple[float, dict]] = []
        self.reconnects = 0

    def run(self) -> None:
        parser, last = SseParser(), None
        while not self.stop.is_set():
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with requests.get(self.url, headers=headers, stream=True, timeout=(5, 30)) as response:
                    response.raise_for_status()
                    self.opened.set()
                    for chunk in response.iter_content(chunk_size=None):
                        arrived = time.time()
                        for event in parser.feed(chunk):
                            last = event.id or last
                            data = json.loads(event.data)
                            if data.get("name") == self.tag:
                                self.events.append((arrived, data))
                        if self.stop.is_set():
                            return
            except requests.RequestException:
                if self.stop.is_set():
                    return  # the system is stopping
                time.sleep(0.5)
            parser = SseParser()  # a new stream: nothing half-read carries over
            self.reconnects += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs per second (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long jobs fall due (default 10)")
    parser.add_argument("--streams", type=int, default=2, help="clients following the stream (1-4, default 2)")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds between the insert and the first due time")
    args = parser.parse_args()
    exit_on_sigterm()
    tag = f"events-{int(time.time())}"
    with BenchSystem(events_max_streams=max(4, args.streams)) as system:
        system.warm_up()
        followers = [Follower(f"{system.api_url}/api/events", tag) for _ in range(args.streams)]
        for follower in followers:
            follower.start()
            follower.opened.wait(30)
        due = plan(args.rate, args.seconds, args.lead)
        insert_jobs(system.engine, (job_row(tag, "noop", {}, utc_from_ns(ns)) for ns in due))
        deadline = time.monotonic() + args.lead + args.seconds + 120
        while time.monotonic() < deadline:
            with system.engine.connect() as conn:
                done = conn.scalar(sa.select(sa.func.count()).where(Job.name == tag, Job.status == "SUCCESS"))
            if done == len(due):
                break
            time.sleep(0.5)
        time.sleep(2.0)  # the last changes' events: a few polls
        for follower in followers:
            follower.stop.set()

    delays: dict[str, list[float]] = defaultdict(list)
    rows = []
    for n, follower in enumerate(followers, 1):
        seen = Counter((data["job_id"], data["status"]) for _, data in follower.events)
        jobs = {job for job, _ in seen}
        missing = len(due) * len(CHANGES) - sum(1 for key in seen if key[1] in CHANGES)
        repeated = sum(count - 1 for count in seen.values())
        for arrived, data in follower.events:
            delays[data["status"]].append((arrived - datetime.fromisoformat(data["at"]).timestamp()) * 1000)
        rows.append([n, len(jobs), len(follower.events), missing, repeated, follower.reconnects])
    print(f"\n{len(due)} noop jobs at {args.rate:g}/s for {args.seconds:g} s; {args.streams} stream(s)\n")
    print_table(["stream", "jobs seen", "events", "missing", "repeated", "reconnects"], rows)
    print("\ndelay from the change (written, by the database clock) to the client, ms\n")
    table = []
    for status in CHANGES:
        ordered = sorted(delays.get(status, []))
        if ordered:
            table.append([status, len(ordered), f"{percentile(ordered, 0.5):.1f}", f"{percentile(ordered, 0.99):.1f}",
                          f"{ordered[-1]:.1f}"])
    every = sorted(d for values in delays.values() for d in values)
    table.append(["all", len(every), f"{percentile(every, 0.5):.1f}", f"{percentile(every, 0.99):.1f}",
                  f"{every[-1]:.1f}" if every else "-"])
    print_table(["status", "events", "p50", "p99", "max"], table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
