"""Request and response schemas of job control: PATCH of a job that has not started, and the
bulk rerun (redrive). A PATCH is validated by the create schema's own fields and validators
(:class:`api.schemas.JobCreateSchema`); only the rules that need the stored job (its type, its
sealed secrets) run in the view, through :func:`check_payload`."""

from __future__ import annotations

import copy
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing, post_load, pre_load, validate, validates_schema

from common.core.control import FINISHED
from common.core.jobtypes import load_payload
from common.core.secrets import ENCRYPTED, MASK, SECRET_FIELDS, Keyring, has_secrets, seal
from common.core.states import JobStatus
from common.infra.config import Settings

from api.admin_schemas import TenantName
from api.schemas import AwareDateTime, JobCreateSchema, Text, UtcDateTime, resolve_delay, too_big

#: Fields a PATCH may name (as sent), and those it may not change.
PATCHABLE = ("execute_at", "delay_seconds", "payload", "max_retries", "timeout_seconds", "priority", "metadata")
_FIXED = {
    "name": "cannot be changed; create a new job for another name",
    "type": "cannot be changed; create a new job for another type",
    "misfire_grace_seconds": "cannot be changed once a job is stored",
}


def _optional(field: fields.Field, description: str | None = None) -> fields.Field:
    """A create field as a PATCH field: the same type and validators, but with no default (a
    PATCH changes only what it names), and its own description when given."""
    changed = copy.deepcopy(field)
    changed.load_default = missing
    changed.required = False
    if description is not None:
        changed.metadata = {**changed.metadata, "description": description}
    return changed


_CREATE = JobCreateSchema._declared_fields


class JobPatchSchema(JobCreateSchema):
    """Changes to a job that has not started (SCHEDULED or QUEUED). Each field is checked as in a
    create; ``payload`` and ``metadata`` replace the stored ones whole. Give at most one of
    ``execute_at`` and ``delay_seconds``."""

    class Meta:
        exclude = tuple(_FIXED)

    payload = _optional(_CREATE["payload"], "The new payload, replacing the stored one; validated against the "
                                            "job's type. A secret sent back as \"***\" keeps the stored secret.")
    execute_at = _optional(_CREATE["execute_at"], "The new time, with an offset; not in the past.")
    delay_seconds = _optional(_CREATE["delay_seconds"], "Run this many seconds from now (instead of execute_at).")
    max_retries = _optional(_CREATE["max_retries"], "Retries after a failed attempt (of the current run).")
    timeout_seconds = _optional(_CREATE["timeout_seconds"], "Longest run of one attempt.")
    priority = _optional(_CREATE["priority"])
    metadata_ = _optional(_CREATE["metadata_"], "New labels, replacing the stored ones.")

    @pre_load
    def _fixed_fields(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict):
            fixed = {name: [reason] for name, reason in _FIXED.items() if name in data}
            if fixed:
                raise ValidationError(fixed)
        return data

    # Replaces the create's schema rule (same name): no field is required, and the payload's
    # rules that depend on the job type run in the view (check_payload).
    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _when_and_payload(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        if not isinstance(original, dict):
            return  # marshmallow already reported "Invalid input type"
        errors: dict[str, Any] = {}
        if "execute_at" in original and "delay_seconds" in original:
            message = "give either execute_at or delay_seconds, not both"
            errors.update(execute_at=[message], delay_seconds=[message])
        if not original:
            errors["_schema"] = [f"nothing to change: give at least one of {', '.join(PATCHABLE)}"]
        big_meta = too_big(data.get("meta"), self.settings.max_metadata_bytes, "CHRONOQ_MAX_METADATA_BYTES")
        if big_meta:
            errors["metadata"] = [big_meta]
        if errors:
            raise ValidationError(errors)

    # Replaces the create's post_load (same name): no defaults; delay_seconds becomes execute_at.
    @post_load
    def _resolve(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return resolve_delay(data)


def check_payload(job_type: str, payload: dict[str, Any], stored: dict[str, Any] | None, settings: Settings,
                  keyring: Keyring | None) -> dict[str, Any]:
    """``payload`` for a job of ``job_type`` as it will be stored, checked as a create checks it
    (size, the type's schema, the network and command rules) and with its secrets sealed. A
    secret value sent back as ``"***"`` (as the API shows it) where the stored payload holds a
    secret of that name keeps the stored secret; anywhere else ``"***"`` is refused, as in a
    create. Raises ``ValidationError`` with the errors of ``payload``."""
    big = too_big(payload, settings.max_payload_bytes, "CHRONOQ_MAX_PAYLOAD_BYTES")
    if big:
        raise ValidationError([big])
    name = SECRET_FIELDS.get(job_type)
    kept = _masked_secrets(payload.get(name) if name else None, (stored or {}).get(name) if name else None)
    if kept:
        # Checked and sealed without the kept ones (a create refuses "***"), then put back.
        payload = {**payload, name: {key: value for key, value in payload[name].items() if key not in kept}}
    load_payload(job_type, payload, settings)  # ValidationError names the payload's field
    if has_secrets(job_type, payload):
        payload = seal(job_type, payload, keyring)
    if kept:
        payload = {**payload, name: {**payload[name], **kept}}
    return payload


def _masked_secrets(values: Any, stored: Any) -> dict[str, Any]:
    """The stored sealed values of the names ``values`` sends as ``"***"``."""
    if not isinstance(values, dict) or not isinstance(stored, dict):
        return {}
    return {
        key: stored[key] for key, value in values.items()
        if value == MASK and isinstance(stored.get(key), dict) and isinstance(stored[key].get(ENCRYPTED), str)
    }


class FinishedStatuses(fields.List):
    """Finished statuses: a JSON list (or one string, comma separated)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(validate=validate.OneOf(
            FINISHED, error="{input} is not a finished status; a rerun takes one of {choices}")), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ValidationError("must be status names")
        split = [part.strip().upper() for item in items for part in item.split(",") if part.strip()]
        if not split:
            raise ValidationError(f"give at least one of {', '.join(FINISHED)}")
        return sorted(set(super()._deserialize(split, attr, data, **kwargs)))


class RedriveSchema(Schema):
    """Which finished jobs to rerun. Every field narrows the set; ``status`` always applies
    (default FAILED), so an empty body reruns the caller's FAILED jobs."""

    status = FinishedStatuses(
        load_default=lambda: [JobStatus.FAILED.value],
        metadata={"description": f"Only jobs in these finished statuses ({', '.join(FINISHED)}); default FAILED."},
    )
    type = Text(metadata={"description": "Only this job type."})
    name = Text(metadata={"description": "Only jobs with exactly this name."})
    schedule_id = fields.UUID(metadata={"description": "Only occurrences of this schedule."})
    finished_after = AwareDateTime(metadata={"description": "Only jobs that finished at or after this time."})
    finished_before = AwareDateTime(metadata={
        "description": "Only jobs that finished before this time (at the latest the request's time; the answer "
                       "says which bound was used: send it back to continue a redrive that had more)."})
    execute_after = AwareDateTime(metadata={"description": "Only jobs whose execute_at is at or after this time."})
    execute_before = AwareDateTime(metadata={"description": "Only jobs whose execute_at is before this time."})
    tenant = TenantName(metadata={"description": "Admins: only this tenant's jobs (without it, every tenant's). "
                                                 "Others may only name their own tenant."})
    limit = fields.Integer(validate=validate.Range(min=1, max=10_000), metadata={
        "description": "Rerun at most this many (oldest finished first); default and most: the tenant's "
                       "max_batch_jobs (10,000 unless lowered)."})
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only count: change nothing."})


class RedriveResultSchema(Schema):
    """What a redrive did."""

    rerun = fields.Integer(metadata={"description": "Jobs rerun by this request (0 in a dry run): SCHEDULED "
                                                    "again and dispatched at once."})
    matched = fields.Integer(metadata={"description": "Finished jobs the filter matched when the request began."})
    more = fields.Boolean(metadata={"description": "Whether matching jobs were left over the limit: send the same "
                                                   "request, with finished_before as answered, to go on."})
    finished_before = UtcDateTime(metadata={"description": "The finished_before bound the request applied."})
    dry_run = fields.Boolean()
