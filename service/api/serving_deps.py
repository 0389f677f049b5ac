"""What the serving routes (native predict, TF Serving v1, KServe V2) share: the model
catalog and raw bodies with a size limit (their errors are answered by service/api/errors.py).

These dependencies are async and do no I/O, on purpose: FastAPI runs every sync dependency
(and both ends of a sync generator one) in its thread pool, and each hop costs about 0.1 ms
on a small machine, more than a LiteRT inference. A prediction takes at most one hop, to
where the lookup and the inference run; a small one whose model is in memory takes none
(service/api/routes/predict.py).
"""

from __future__ import annotations

import zlib
from typing import Annotated

from fastapi import Depends, Request

from service.serving.catalog import Catalog
from service.serving.store import BadInput


class BodyTooLarge(ValueError):
    """The request body is over the limit."""


async def catalog(request: Request) -> Catalog:
    """The app's model catalog (made with the app; async: no thread hop to fetch it)."""
    return request.app.state.catalog


def body_limit(request: Request) -> int:
    """The largest body a route reads: TAPEFIT_MAX_REQUEST_BYTES, inflated bodies included
    (1,000 images of 784 pixels as JSON numbers fit well inside the default 32 MiB)."""
    return request.app.state.settings.max_request_bytes


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
    limit = body_limit(request)
    body = await read_capped(request, limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise BadInput(f"unsupported Content-Encoding '{encoding}': use gzip or deflate")
    inflater = zlib.decompressobj(wbits=_WBITS[encoding])
    try:
        # Bounded: a small compressed body must not inflate past the limit (a zip bomb).
        content = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadInput(f"the {encoding} body could not be inflated: {exc}") from None
    if len(content) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"the inflated body is over the limit of {limit:,} bytes")
    return content


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


CatalogDep = Annotated[Catalog, Depends(catalog)]
BodyDep = Annotated[bytes, Depends(read_body)]
