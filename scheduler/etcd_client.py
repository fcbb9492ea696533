"""aetcd's Client, able to dial etcd over TLS (with a client certificate) as well.

aetcd 1.0 builds its channel in `Client.connect` with `grpc.aio.insecure_channel`
and nowhere else; `EtcdClient.connect` is that method with the one line changed:
given TLS material it opens `grpc.aio.secure_channel` with
`grpc.ssl_channel_credentials`. Everything else (the stubs, username/password
auth through etcd's Authenticate and the `token` metadata, the watcher) is
aetcd's as it stands, but for one thing aetcd lacks: a call refused UNAUTHENTICATED
(etcd restarted and forgot its simple tokens) drops the channel, so that the next
call logs in again. An aetcd upgrade that changes `connect` must be
checked against this copy (tests/integration/test_etcd_tls.py does that).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc, watcher
from aetcd.client import _handle_errors  # aetcd's own AioRpcError -> ClientError map

from paas.scheduler.etcd_access import EtcdAccess


class EtcdClient(aetcd.Client):  # type: ignore[misc]  # aetcd has no type hints
    """An aetcd.Client whose channel is TLS when `access` carries a CA or a certificate."""

    # Set by aetcd.Client.__init__; declared so that the copy of connect type-checks.
    _is_connecting: bool
    _connected: asyncio.Event
    _connect_wait_timeout: float

    def __init__(self, host: str, port: int, timeout: float, access: EtcdAccess) -> None:
        super().__init__(
            host=host,
            port=port,
            username=access.user or None,
            password=access.password or None,
            timeout=timeout,  # type: ignore[arg-type]  # aetcd says int; grpc takes a float
        )
        self._credentials: grpc.ChannelCredentials | None = None
        if access.tls:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=access.ca or None,
                private_key=access.key or None,
                certificate_chain=access.cert or None,
            )

    @_handle_errors  # type: ignore[untyped-decorator]
    async def connect(self) -> None:
        """aetcd's connect, with the channel built secure when there are credentials."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            if self._credentials is None:
                self.channel = rpc.insecure_channel(target, options=options)
            else:
                self.channel = rpc.secure_channel(target, self._credentials, options=options)
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", response.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        except BaseException:
            # A failed Authenticate must not leave a half-open channel behind.
            if self.channel is not None:
                await self.channel.close()
                self._init_channel_attrs()
            raise
        finally:
            self._is_connecting = False

    # etcd forgets simple-auth tokens when it restarts, and aetcd would keep sending
    # the old one for ever. A call that etcd answers UNAUTHENTICATED closes the
    # channel, so that the next call connects and authenticates afresh; the call
    # itself still fails (its caller retries as for any etcd error).

    async def _forget_token(self) -> None:
        if self._username is not None:
            await self.close()

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get(*args, **kwargs)
        except aetcd.exceptions.UnauthenticatedError:
            await self._forget_token()
            raise

    async def get_prefix(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_prefix(*args, **kwargs)
        except aetcd.exceptions.UnauthenticatedError:
            await self._forget_token()
            raise

    async def transaction(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().transaction(*args, **kwargs)
        except aetcd.exceptions.UnauthenticatedError:
            await self._forget_token()
            raise

    async def lease(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().lease(*args, **kwargs)
        except aetcd.exceptions.UnauthenticatedError:
            await self._forget_token()
            raise
