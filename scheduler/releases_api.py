"""An app's releases and config vars: ListReleases, GetRelease, SetConfig, Rollback.

PLACEHOLDER until the releases work lands (issue 13): the RPCs exist so that the
scheduler starts (api.py wants every RPC offered); each refuses.
"""

from __future__ import annotations

from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import Refused
from paas.scheduler.guard import Context
from paas.scheduler.store import Store


class ReleasesService:
    """ListReleases, GetRelease, SetConfig and Rollback."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def ListReleases(
        self, request: pb.ListReleasesRequest, context: Context
    ) -> pb.ListReleasesResponse:
        raise Refused("ListReleases is not served yet")

    async def GetRelease(self, request: pb.GetReleaseRequest, context: Context) -> pb.Release:
        raise Refused("GetRelease is not served yet")

    async def SetConfig(self, request: pb.SetConfigRequest, context: Context) -> pb.Release:
        raise Refused("SetConfig is not served yet")

    async def Rollback(self, request: pb.RollbackRequest, context: Context) -> pb.Release:
        raise Refused("Rollback is not served yet")
