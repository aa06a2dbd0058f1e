"""parse_size / format_size: the memory sizes `vmboot run -m` and Machine(memory=...) accept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmboot.errors import UsageError
from vmboot.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256M", 256 << 20), ("1G", 1 << 30), ("64MiB", 64 << 20), ("512kb", 512 << 10),
        ("4096", 4096), ("0x1000", 4096), ("1.5G", 3 << 29), ("2t", 2 << 40), (" 8 M ", 8 << 20),
        ("16B", 16), (4096, 4096),
    ],
)
def test_accepted_forms(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "M", "1.3", "-1", "1iB", "1Mx", "0x10M", "1e6", "1 2M"])
def test_rejected_forms_name_value_and_accepted_forms(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text, what="--memory")
    msg = str(info.value)
    assert msg.startswith("--memory: ")
    assert repr(text) in msg
    assert "256M" in msg  # the accepted forms are listed


def test_non_string_inputs() -> None:
    with pytest.raises(UsageError):
        parse_size(True)
    with pytest.raises(UsageError):
        parse_size(-5)


@given(st.integers(min_value=0, max_value=1 << 50), st.sampled_from(["", "K", "M", "G", "KiB", "GiB"]))
def test_round_trip_with_units(n: int, unit: str) -> None:
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "KiB": 1 << 10, "GiB": 1 << 30}[unit]
    assert parse_size(f"{n}{unit}") == n * scale


def test_format_size() -> None:
    assert format_size(256 << 20) == "256 MiB"
    assert format_size(3 << 30) == "3 GiB"
    assert format_size(1000) == "1000 bytes"
    assert parse_size(format_size(64 << 20).replace(" ", "")) == 64 << 20
