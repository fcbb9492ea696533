"""StatSlug, UploadSlug, FetchSlug: placeholder answering UNIMPLEMENTED until the
slug store lands (issue 10); keeps the composition whole meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from paas.proto import paas_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


class SlugsService:
    async def StatSlug(self, request: pb.StatSlugRequest, context: Context) -> pb.StatSlugResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "slugs are not stored yet")
        raise AssertionError("abort returns never")

    async def UploadSlug(
        self, requests: AsyncIterator[pb.SlugUpload], context: Context
    ) -> pb.UploadSlugResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "slugs are not stored yet")
        raise AssertionError("abort returns never")

    async def FetchSlug(
        self, request: pb.FetchSlugRequest, context: Context
    ) -> AsyncIterator[pb.SlugData]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "slugs are not stored yet")
        yield pb.SlugData()  # pragma: no cover - makes this an async generator
