"""What the serving routes (native predict, TF Serving v1, KServe V2) share: the model
catalog, raw bodies with a size limit, and the model servers' error format.

These dependencies are async and do no I/O, on purpose: FastAPI runs every sync dependency
(and both ends of a sync generator one) in its thread pool, and each hop costs about 0.1 ms
on a small machine, more than a LiteRT inference. A prediction takes one hop, its sync
route, where the lookup and the inference run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.inference import BadInput, ModelUnavailable
from service.serving import Catalog, ModelNotFound

# 1,000 images of 784 pixels as JSON numbers fit well inside; anything larger is refused
# before it is held in memory.
MAX_BODY_BYTES = 32 * 1024 * 1024


class BodyTooLarge(ValueError):
    """The request body is over the limit."""


async def catalog(request: Request) -> Catalog:
    """The app's model catalog (made with the app; async: no thread hop to fetch it)."""
    return request.app.state.catalog


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with BodyTooLarge as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request) -> bytes:
    """The body, inflated when the client compressed it (tritonclient can gzip or deflate)."""
    body = await read_capped(request, MAX_BODY_BYTES)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise BadInput(f"unsupported Content-Encoding '{encoding}': use gzip or deflate")
    inflater = zlib.decompressobj(wbits=_WBITS[encoding])
    try:
        # Bounded: a small compressed body must not inflate past the limit (a zip bomb).
        content = inflater.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise BadInput(f"the {encoding} body could not be inflated: {exc}") from None
    if len(content) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise BodyTooLarge(f"the inflated body is over the limit of {MAX_BODY_BYTES:,} bytes")
    return content


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


CatalogDep = Annotated[Catalog, Depends(catalog)]
BodyDep = Annotated[bytes, Depends(read_body)]


def error(status_code: int, message: str) -> JSONResponse:
    """A model server's error body."""
    return JSONResponse({"error": message}, status_code=status_code)


class ProtocolRoute(APIRoute):
    """A route that answers errors as TF Serving and KServe do: 404 for an unknown model or
    version and for one not trained yet (TF Serving's "servable not found": the status
    endpoints tell it is loading), 400 for a bad request, 413 for a huge body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (ModelNotFound, ModelUnavailable) as exc:
                return error(404, str(exc))
            except BadInput as exc:
                return error(400, str(exc))
            except BodyTooLarge as exc:
                return error(413, str(exc))
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
                where = ".".join(str(part) for part in first["loc"])
                return error(400, f"{where}: {first['msg']}")

        return route
