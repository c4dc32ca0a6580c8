"""parse_dataclass reads a field's type however it is spelled: `Optional[int]` and `int | None`
(typing.Union and types.UnionType to get_type_hints) accept and refuse the same values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional  # noqa: UP035 - the old spelling is the point

import pytest

from handlers.config import ConfigError, parse_dataclass


@dataclass(frozen=True)
class Old:
    limit: Optional[int] = None  # noqa: UP045
    mode: Optional[Literal["a", "b"]] = None  # noqa: UP045


@dataclass(frozen=True)
class New:
    limit: int | None = None
    mode: Literal["a", "b"] | None = None


@pytest.mark.parametrize("cls", [Old, New])
def test_both_spellings_accept_a_value_and_none(cls):
    assert parse_dataclass(cls, {"limit": 3, "mode": "b"}, "x") == cls(3, "b")
    assert parse_dataclass(cls, {"limit": None}, "x") == cls()


@pytest.mark.parametrize("cls", [Old, New])
def test_both_spellings_refuse_the_same_way(cls):
    with pytest.raises(ConfigError, match=r"^x\.limit: expected int or null, got 'many'$"):
        parse_dataclass(cls, {"limit": "many"}, "x")
    with pytest.raises(ConfigError, match=r"^x\.limit: expected int or null, got True$"):
        parse_dataclass(cls, {"limit": True}, "x")
    with pytest.raises(ConfigError, match=r"^x\.mode: expected 'a' \| 'b' or null, got 'c'$"):
        parse_dataclass(cls, {"mode": "c"}, "x")
