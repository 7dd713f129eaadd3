"""``cloudcred run --priority auto``: the replicas of one Deployment share their
arguments, and kopf pauses every operator that sees another of the same priority, so
``auto`` gives each replica its own, the earliest started the highest."""

from __future__ import annotations

import pytest

from cloudcred import peering
from cloudcred.__main__ import _parser


def test_earlier_start_means_higher_priority() -> None:
    first = peering.seniority_priority(1_796_000_000_000_000_000)
    later = peering.seniority_priority(1_796_000_000_000_001_000)  # a microsecond on
    assert first > later
    # Below any explicit priority of 0 or more: such an operator outranks the replicas.
    assert first < 0


def test_two_replicas_started_in_turn_get_distinct_priorities() -> None:
    parse = _parser().parse_args
    first = parse(["run", "--peering", "cloudcred", "--priority", "auto"]).priority
    second = parse(["run", "--peering", "cloudcred", "--priority", "auto"]).priority
    assert first > second


def test_explicit_priorities_stay_integers() -> None:
    assert _parser().parse_args(["run", "--priority", "100"]).priority == 100
    assert _parser().parse_args(["run"]).priority == 0
    with pytest.raises(ValueError, match="high"):
        peering.priority("high")


def test_a_wrong_priority_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["run", "--priority", "high"])
    assert exit_.value.code == 2
    assert "invalid priority value: 'high'" in capsys.readouterr().err
