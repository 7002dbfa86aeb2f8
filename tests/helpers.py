"""Helpers shared by the tests (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations


def error_text(error: BaseException | None) -> str:
    """The messages of an exception and of every exception it was raised from (config wrappers chain them)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)
