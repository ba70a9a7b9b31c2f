"""The plumbing every service stands on: settings, database sessions, Kafka producers, the
consumer loop and the dead-letter format, retries, clocks, errors, logging, health and clean stops.
It imports nothing of the job core."""
