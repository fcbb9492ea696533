"""Finding what a request names: its app, and the instances a `process` argument selects.

A `process` argument is "" (every instance), a type ("web") or one instance
("web.3"), as `paas ps`, `paas restart` and `paas logs -p` take it.
"""

from __future__ import annotations

from paas.common.names import NameError_, check_app_name
from paas.scheduler.errors import NotFound
from paas.scheduler.store import AppRecord, InstanceRecord, Store


async def require_app(store: Store, name: str) -> AppRecord:
    """The app `name`; InvalidInput for no or a malformed name, NotFound for an unknown one."""
    if not name:
        raise NameError_("no app given")
    check_app_name(name)
    app = await store.app(name)
    if app is None:
        raise NotFound(f"unknown app {name!r} (`paas apps` lists them)")
    return app


def select(records: list[InstanceRecord], process: str) -> list[InstanceRecord]:
    """The instances `process` names: all, a type, or one instance."""
    ordered = sorted(records, key=lambda r: r.name)
    if not process:
        return ordered
    if "." in process:
        return [r for r in ordered if str(r.name) == process]
    return [r for r in ordered if r.name.type == process]
