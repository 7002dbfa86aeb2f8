"""Yes/no settings as the command line gives them (bundle.flags)."""

from __future__ import annotations

import pytest

from bundle.flags import as_flag


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("True", True), ("FALSE", False), (" true ", True), (True, True),
     (False, False), (1, True), (0, False)],
)  # fmt: skip
def test_yes_no_values(value: object, expected: bool) -> None:
    assert as_flag(value, "resume") is expected


@pytest.mark.parametrize("value", ["yes", "", "1", 2, None, 0.0, "null"])
def test_other_values_name_the_setting_and_the_value(value: object) -> None:
    with pytest.raises(ValueError, match=f"resume must be true or false, got {value!r}"):
        as_flag(value, "resume")
