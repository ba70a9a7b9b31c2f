"""The job core: states and their order, the schema's models and their Alembic migrations,
every lifecycle statement (:mod:`store`), the topic messages, job types and payloads, scan
windows and dispatch."""
