"""User-facing errors.

A :class:`UserError` is a problem with what the user asked for (a bad name, a missing file, a value out of range).
The CLI prints its message as one line on stderr and exits with status 2; the message always names the problem and
the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the problem and how to fix it."""


def unknown_name(kind: str, name: str, allowed: list[str] | tuple[str, ...]) -> UserError:
    """The error for an unknown registry name, listing the allowed names."""
    return UserError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(allowed))}")
