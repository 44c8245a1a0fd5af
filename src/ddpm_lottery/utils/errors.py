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
