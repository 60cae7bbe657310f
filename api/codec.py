"""The codec endpoint: lets the Temporal Web UI and `temporal workflow show --codec-endpoint` read runs
whose payloads are encrypted.

Its routes are an APIRouter like every other, served by a small app of its own that api/application.py mounts at
/codec: its CORS rule (the Web UI's origin only) must apply to nothing else, and Starlette's middleware is
per app, so a router of the gateway's own app could not have it."""

from collections.abc import Sequence
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request, Response, params
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from keel.encryption import CodecKeyError, EncryptionCodec

router = APIRouter()


def codec_app(
    codec: EncryptionCodec, web_ui_origin: str | None, dependencies: Sequence[params.Depends] = ()
) -> FastAPI:
    # `dependencies`: the gateway's authentication when it is on (CORS preflights pass without it).
    # `web_ui_origin` None (no Web UI address known): no browser origin is allowed at all.
    app = FastAPI(
        title="Keel codec", docs_url=None, redoc_url=None, openapi_url=None, dependencies=list(dependencies)
    )
    app.state.codec = codec
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[_origin(web_ui_origin)] if web_ui_origin else [],
        allow_methods=["POST"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        allow_credentials=True,
    )
    app.include_router(router)
    return app


def _codec(request: Request) -> EncryptionCodec:
    codec: EncryptionCodec = request.app.state.codec
    return codec


CodecDep = Annotated[EncryptionCodec, Depends(_codec)]


@router.post("/encode")
async def encode(request: Request, codec: CodecDep) -> Response:
    return await _transcode(request, codec, encode=True)


@router.post("/decode")
async def decode(request: Request, codec: CodecDep) -> Response:
    return await _transcode(request, codec, encode=False)


async def _transcode(request: Request, codec: EncryptionCodec, encode: bool) -> Response:
    try:
        payloads = json_format.Parse(await request.body(), Payloads())
    except (json_format.ParseError, UnicodeDecodeError) as err:
        return JSONResponse({"detail": f"not a Payloads JSON body: {err}"}, 400)
    try:
        result = await (codec.encode if encode else codec.decode)(payloads.payloads)
    except CodecKeyError as err:
        return JSONResponse({"detail": str(err)}, 400)
    return Response(json_format.MessageToJson(Payloads(payloads=result)), media_type="application/json")


def _origin(url: str) -> str:
    # A browser's Origin is scheme://host[:port]; KEEL_TEMPORAL_UI_URL may carry a path (a UI behind a
    # prefix), which no Origin header ever matches.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url.rstrip("/")
