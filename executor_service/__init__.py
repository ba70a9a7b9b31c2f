"""chronoq's executor: consumes dispatched jobs, fires each at its ``execute_at`` with
APScheduler, runs it, retries it with backoff and publishes every transition."""
