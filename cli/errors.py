"""Exit codes, and the root of every error paas.cli raises on purpose.

    CLIError (Exception)
    ├── UsageError            a command line that parses but does not make sense  exit 2
    ├── CommandError          bad input, or a request that cannot go ahead        exit 1
    ├── SchedulerError        a scheduler replica answered and refused (client.py) exit 1
    │   └── SchedulerUnreachable   no replica answered at all
    ├── AppConfigError        DIR/paas.toml or DIR/.env is malformed (appconfig.py) exit 1
    └── TimeSpecError         a --since that does not parse (timespec.py)         exit 1

paas.common.errors.InvalidInput (a bad formation, name, Procfile, config var,
address or drain URL) is the other kind of expected failure: exit 1.
`paas up`'s ClusterError (localcluster.py) is handled by up.py itself.

`paas.cli.main.run` is the one place that turns them into one `error: ...` line
on stderr and the exit code (`exit_code`); nothing else prints them, and
anything else that escapes is a bug, shown with its traceback.
"""

from __future__ import annotations

from paas.common.errors import InvalidInput

EXIT_OK = 0
EXIT_REFUSED = 1  # a refused request, bad input, an unreachable scheduler
EXIT_USAGE = 2  # a command line that does not parse
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class CLIError(Exception):
    """An expected failure of a command; the message is the one line to print."""


class UsageError(CLIError):
    """Bad command line input found after parsing; exit code 2."""


class CommandError(CLIError):
    """Bad input or a refused request; exit code 1."""


def exit_code(error: CLIError | InvalidInput) -> int:
    """The exit code of an expected failure."""
    return EXIT_USAGE if isinstance(error, UsageError) else EXIT_REFUSED
