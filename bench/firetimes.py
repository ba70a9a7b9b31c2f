"""Fire-time arithmetic: how long finding a schedule's next fire time takes (pure CPU, no
services). The API does it for every schedule it shows (``next_fire_at``) and the scanner for
every schedule it makes occurrences of, so a slow case shows in both.

For each schedule below, ``next_fire`` is asked ``--calls`` times from instants spread over a
year (some just after a daylight-saving change in the schedule's zone) and the table gives the
time per call.

    .venv/bin/python -m bench.firetimes --calls 200
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta, timezone

from bench.benchlib import print_table
from bench.lateness import percentile
from common.core.firetimes import Timing, next_fire

SCHEDULES = {
    "every second (UTC)": Timing(cron="* * * * * *"),
    "every second (Berlin)": Timing(cron="* * * * * *", timezone="Europe/Berlin"),
    "every 5 min (New York)": Timing(cron="*/5 * * * *", timezone="America/New_York"),
    "02:30 nightly (Berlin)": Timing(cron="30 2 * * *", timezone="Europe/Berlin"),
    "every 90 s (interval)": Timing(interval_seconds=90),
}

#: Instants just after Europe/Berlin's and America/New_York's changes in 2026, in UTC.
CHANGES = [datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc), datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc),
           datetime(2026, 3, 8, 7, 30, tzinfo=timezone.utc), datetime(2026, 11, 1, 6, 30, tzinfo=timezone.utc)]


def instants(calls: int, seed: int) -> list[datetime]:
    """``calls`` instants: one in ten just after a daylight-saving change, the rest spread over 2026."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [rng.choice(CHANGES) + timedelta(seconds=rng.uniform(0, 3600)) if n % 10 == 0
            else start + timedelta(seconds=rng.uniform(0, 365 * 86400)) for n in range(calls)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="next_fire calls per schedule")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for name, timing in SCHEDULES.items():
        took = []
        for after in instants(args.calls, args.seed):
            began = time.perf_counter()
            next_fire(timing, after)
            took.append((time.perf_counter() - began) * 1000)
        took.sort()
        rows.append([name, len(took), f"{percentile(took, 0.5):.3f}", f"{percentile(took, 0.9):.3f}",
                     f"{percentile(took, 0.99):.3f}", f"{took[-1]:.3f}"])
        print(f"{name}: {len(took)} calls done", flush=True)
    print_table(["schedule", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)


if __name__ == "__main__":
    main()
