"""The record of which version was default, which rollback relies on."""

from __future__ import annotations

from transerve.operate.rollout import HISTORY, History


def test_defaults_are_recorded_in_order_and_survive_a_reload(tmp_path):
    history = History.load(tmp_path)
    history.became_default("m", "1.0")
    history.became_default("m", "1.1")
    history.became_default("other", "3")
    history.became_default("m", "1.0")  # a rollback: 1.0 is the latest default again, once
    again = History.load(tmp_path)
    assert again.of("m") == ["1.1", "1.0"]
    assert again.of("other") == ["3"]
    assert again.of("unknown") == []


def test_an_unreadable_history_starts_empty(tmp_path):
    (tmp_path / HISTORY).write_text("{not json")
    assert History.load(tmp_path).of("m") == []
