"""Exit codes and the two kinds of expected failure every command may raise.

`main` turns them into one `error: ...` line on stderr and the exit code;
nothing else prints them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1  # a refused request, bad input, an unreachable scheduler
EXIT_USAGE = 2  # a command line that does not parse
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(Exception):
    """Bad command line input found after parsing; exit code 2."""


class CommandError(Exception):
    """Bad input or a refused request; exit code 1."""
