"""Publishing transitions to the updates topic. RUNNING is fire-and-forget (the job must not
wait for the broker); terminal updates wait for the acknowledgement, with a few retries."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from common.config import Settings
from common.errors import BrokerUnavailable
from common.kafka import Producer
from common.messages import UpdateMessage, encode_update

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 64 * 1024  # bytes of JSON output kept in an update
ERROR_LIMIT = 4000        # characters of an error message kept
PUBLISH_TRIES = 4


def safe_output(value: Any, limit: int = OUTPUT_LIMIT) -> Any:
    """``value`` as JSON-compatible data no larger than ``limit`` bytes once encoded; a larger
    one becomes ``{"truncated": true, "size": n, "preview": "<first bytes of the JSON>"}``."""
    try:
        encoded = json.dumps(value, default=str)
    except (TypeError, ValueError):  # circular structures and the like
        encoded = json.dumps(repr(value))
    if len(encoded.encode()) <= limit:
        return json.loads(encoded)
    return {"truncated": True, "size": len(encoded.encode()), "preview": encoded[: limit // 2]}


def short_error(exc: BaseException | str) -> str:
    """An error line for the update and the history: type and message, bounded."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LIMIT else text[:ERROR_LIMIT] + "…(truncated)"


class Updates:
    """Sends :class:`UpdateMessage` s for one executor."""

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self.settings = settings
        self.producer = producer

    def running(self, update: UpdateMessage) -> None:
        """Queue RUNNING without waiting for the ack; a failure is only logged (the terminal
        update that follows carries started_at too)."""
        try:
            self.producer.send(self.settings.topic_updates, update.key, encode_update(update))
        except BrokerUnavailable as exc:
            log.warning("job %s: RUNNING update not published: %s", update.job_id, exc)

    def final(self, update: UpdateMessage) -> bool:
        """Publish SUCCESS/FAILED/RETRYING and wait for the ack, retrying a few times."""
        value = encode_update(update)
        for attempt in range(1, PUBLISH_TRIES + 1):
            try:
                self.producer.send_and_wait(self.settings.topic_updates, update.key, value)
                return True
            except BrokerUnavailable as exc:
                if attempt == PUBLISH_TRIES:
                    log.error(
                        "job %s: %s update of attempt %d not published after %d tries (%s); the "
                        "scanner re-dispatches the job once its lease runs out",
                        update.job_id, update.status, update.attempt, PUBLISH_TRIES, exc,
                    )
                    return False
                delay = 0.5 * 2 ** (attempt - 1)
                log.warning(
                    "job %s: %s update not published (%s); trying again in %.1fs",
                    update.job_id, update.status, exc, delay,
                )
                time.sleep(delay)
        return False
