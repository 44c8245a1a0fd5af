"""``python -m ddpm_lottery.cli``: the same as the ``ddpm-lottery`` command."""

from ddpm_lottery.cli.main import entry_point

entry_point()
