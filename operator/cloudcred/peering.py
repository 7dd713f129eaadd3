"""Peering priorities for replicas of one Deployment.

kopf's peering lets only the operator of the highest priority act, and pauses every
operator that sees another one of the same priority. The replicas of a Deployment all
get the same arguments, so ``--priority auto`` gives each a priority of its own: the
earlier a replica started, the higher, so the longest-running replica stays the
active one and a replica started later (a rollout, a rescheduled pod) waits as a
standby instead of taking over. Auto priorities are negative: an operator started
with an explicit priority of 0 or more (e.g. a developer's, kopf's intended use of
peering) outranks them all.
"""

from __future__ import annotations

import time

AUTO = "auto"


def seniority_priority(started_ns: int | None = None) -> int:
    """Minus the start time in microseconds: distinct for replicas started apart by a
    microsecond or more, and decreasing with the start time."""
    started = time.time_ns() if started_ns is None else started_ns
    return -(started // 1000)


def priority(value: str) -> int:
    """``--priority``: an integer, or ``auto`` (see above). The name is argparse's
    word in its error message ("invalid priority value")."""
    if value == AUTO:
        return seniority_priority()
    return int(value)
