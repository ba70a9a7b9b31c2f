"""Workflows: how soon a task starts after its last dependency ended, stage by stage.

A whole system (:class:`bench.system.BenchSystem`: services as processes, PostgreSQL, tansu)
runs ``--workflows`` diamonds (a → b, c → d) of noop tasks, created through the API at
``--rate`` per second. For each edge from a task's last dependency to the task, it reads the
times the database recorded (``job_events``: the database's clock, on this machine) and the
dependency's ``finished_at`` (the executor's clock, the same machine's) and prints each stage:

- end → recorded: the attempt ended on the executor, its end written (with the release);
- recorded → queued: the released task claimed and published;
- queued → running: an executor consumed it and claimed its start (it fires then);
- end → running: all of it, the delay a user sees.

    .venv/bin/python -m bench.workflows --workflows 200 --rate 20
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests
import sqlalchemy as sa

from bench.benchlib import print_table
from bench.lateness import percentile
from bench.system import BenchSystem, exit_on_sigterm
from common.core.models import Job, JobEvent, Workflow
from common.infra.clock import ensure_aware

DIAMOND = [
    {"key": "a", "type": "noop"},
    {"key": "b", "type": "noop", "depends_on": ["a"]},
    {"key": "c", "type": "noop", "depends_on": ["a"]},
    {"key": "d", "type": "noop", "depends_on": ["b", "c"]},
]
STAGES = ("end → recorded", "recorded → queued", "queued → running", "end → running")


def create_all(url: str, tag: str, count: int, rate: float) -> list[str]:
    """Create ``count`` diamonds at ``rate`` per second (a few requests in flight at once)."""
    session = requests.Session()

    def one(n: int) -> str:
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
        response = session.post(f"{url}/api/workflows", timeout=30,
                                json={"name": f"{tag}-{n}", "delay_seconds": 0, "tasks": DIAMOND})
        response.raise_for_status()
        return response.json()["id"]

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def stages(engine: sa.Engine, ids: list[str]) -> dict[str, list[float]]:
    """Per stage, the delays (ms) of every edge from a last dependency to its task."""
    workflow_ids = [uuid.UUID(i) for i in ids]
    with engine.connect() as conn:
        graphs = {row.id: row.graph for row in conn.execute(sa.select(Workflow.id, Workflow.graph)
                                                            .where(Workflow.id.in_(workflow_ids)))}
        tasks = conn.execute(sa.select(Job.id, Job.workflow_id, Job.task_key, Job.finished_at)
                             .where(Job.workflow_id.in_(workflow_ids))).all()
        events: dict[Any, dict[str, datetime]] = defaultdict(dict)
        for job_id, status, at in conn.execute(sa.select(JobEvent.job_id, JobEvent.status, JobEvent.at)
                                               .where(JobEvent.job_id.in_([t.id for t in tasks]))):
            events[job_id].setdefault(status, ensure_aware(at))
    by_key = {(t.workflow_id, t.task_key): t for t in tasks}
    out: dict[str, list[float]] = defaultdict(list)
    for workflow_id, graph in graphs.items():
        for spec in graph["tasks"]:
            if not spec["depends_on"]:
                continue
            child = by_key[(workflow_id, spec["key"])]
            last = max((by_key[(workflow_id, d)] for d in spec["depends_on"]), key=lambda t: t.finished_at)
            ended = ensure_aware(last.finished_at)
            recorded = events[last.id]["SUCCESS"]
            queued, running = events[child.id]["QUEUED"], events[child.id]["RUNNING"]
            for stage, (a, b) in zip(STAGES, ((ended, recorded), (recorded, queued), (queued, running),
                                              (ended, running))):
                out[stage].append((b - a).total_seconds() * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=200, help="diamonds to run (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="diamonds created per second (default 20)")
    args = parser.parse_args()
    exit_on_sigterm()
    tag = f"wf-{int(time.time())}"
    with BenchSystem() as system:
        system.warm_up()
        ids = create_all(system.api_url, tag, args.workflows, args.rate)
        deadline = time.monotonic() + 120 + args.workflows / args.rate
        ended = 0
        while time.monotonic() < deadline:
            with system.engine.connect() as conn:
                ended = conn.scalar(sa.select(sa.func.count()).select_from(Workflow)
                                    .where(Workflow.name.like(f"{tag}-%"), Workflow.status != "RUNNING")) or 0
            if ended == len(ids):
                break
            time.sleep(0.5)
        measured = stages(system.engine, ids)
    print(f"\n{ended}/{len(ids)} diamonds ended; {len(measured[STAGES[-1]])} edges "
          f"(a → b, a → c, and the later of b, c → d)\n")
    rows = []
    for stage in STAGES:
        ordered = sorted(measured[stage])
        rows.append([stage, len(ordered), f"{percentile(ordered, 0.5):.1f}", f"{percentile(ordered, 0.9):.1f}",
                     f"{percentile(ordered, 0.99):.1f}", f"{ordered[-1]:.1f}" if ordered else "-"])
    print_table(["stage", "edges", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
