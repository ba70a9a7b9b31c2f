"""Shared by every chronoq service: configuration, schema, sessions, messages, Kafka helpers."""

__version__ = "0.1.0"
