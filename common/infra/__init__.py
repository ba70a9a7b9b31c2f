"""The plumbing every service stands on: settings, database sessions and migrations, Kafka
producers and the consumer loop, retries, clocks, errors, logging, health and clean stops."""
