"""The root of every error paas.common raises: input that breaks a rule.

    InvalidInput (ValueError)
    ├── NameError_        an app, process type, node or instance name   (names.py)
    ├── FormationError    web=abc, web-2 below zero, an unknown type    (formation.py)
    ├── ProcfileError     a Procfile that cannot be used                (procfile.py)
    ├── ConfigVarsError   an env key no process can take, a NUL, a size (configvars.py)
    ├── DrainURLError     a log drain URL                               (drainurl.py)
    └── AddressError      a HOST:PORT list                              (addresses.py)

Each message names the offending thing and the rule, in one line, so the CLI can
print it as is and the scheduler can send it back as INVALID_ARGUMENT.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input that breaks a rule; the message names the thing and the rule."""
