"""Each package's errors hang under its one documented root, so the one place that
turns them into a status or an exit code (scheduler/guard.py, cli/main.py, `paas
agent`) catches every expected failure; a new error class must join its tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import paas.agent
import paas.cli
import paas.common
import paas.scheduler
from paas.agent.errors import AgentError
from paas.cli.errors import CLIError
from paas.common.errors import InvalidInput
from paas.scheduler.errors import SchedulerError

# Classes that are not an expected failure on purpose, each with its reason.
OUTSIDE = {
    # an edge the state table lacks is a bug in the supervisor, not a request refused
    "paas.agent.states.TransitionError",
    # `paas up` reports a part that did not come up itself, with its log's tail
    "paas.cli.localcluster.ClusterError",
}


def errors_of(package: object) -> list[type[BaseException]]:
    found = []
    path = package.__path__  # type: ignore[attr-defined]
    prefix = package.__name__ + "."  # type: ignore[attr-defined]
    for info in pkgutil.iter_modules(path, prefix):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            # A private class (`_Busy`) is one module's own control flow, never raised out.
            private = value.__name__.startswith("_")
            if issubclass(value, BaseException) and value.__module__ == info.name and not private:
                found.append(value)
    return found


@pytest.mark.parametrize(
    ("package", "root"),
    [
        (paas.agent, AgentError),
        (paas.scheduler, SchedulerError),
        (paas.cli, CLIError),
        (paas.common, InvalidInput),
    ],
    ids=["agent", "scheduler", "cli", "common"],
)
def test_every_error_of_a_package_is_under_its_root(
    package: object, root: type[BaseException]
) -> None:
    errors = errors_of(package)
    assert root in errors, "the root is defined in the package itself"
    strays = [
        f"{e.__module__}.{e.__qualname__}"
        for e in errors
        if not issubclass(e, root) and f"{e.__module__}.{e.__qualname__}" not in OUTSIDE
    ]
    assert strays == []
