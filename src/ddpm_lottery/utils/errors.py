"""User-facing errors.

Every problem caused by the user's input (files, settings, run folders) is raised as
:class:`UserError` with a one-line message that names the problem and the fix.  The CLI
prints the message and exits with a non-zero code, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is one line: what is wrong, then what to do."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep messages on one line even when they embed paths or exception texts.
        super().__init__(" ".join(str(message).split()))


class FolderBusy(UserError):
    """A run folder another process holds: a study skips it and comes back, other commands stop."""


def require_type(value, expected: type | tuple[type, ...], what: str):
    """``value`` when it is an instance of ``expected``; else the one-line error a public function gives
    where Python would raise an AttributeError deep inside it.  A bool is no int here (``level=True``)."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    names = " or ".join("None" if kind is type(None) else kind.__name__ for kind in kinds)
    kind = type(value).__name__
    shown = repr(value) if len(repr(value)) <= 40 else f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind}"
    raise UserError(f"{what} must be {names}, not {shown}")
