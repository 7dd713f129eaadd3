"""Conditions in the Kubernetes convention, kept with their transition times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time (status fields, provider answers; any fraction of a second) as an
    aware datetime; a time without a zone is UTC. None when it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def condition(
    previous: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
) -> dict[str, Any]:
    """A condition; ``lastTransitionTime`` moves only when the status changes."""
    old = find(previous, type_)
    transition = (
        old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else timestamp(now())
    )
    result = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a condition changed in a way worth an Event (status or reason)."""
    return old is None or (old.get("status"), old.get("reason")) != (
        new["status"],
        new["reason"],
    )
