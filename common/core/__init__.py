"""The job core: states and their order, the schema's models, every lifecycle statement
(:mod:`store`), the topic messages, job types and payloads, scan windows and dispatch."""
