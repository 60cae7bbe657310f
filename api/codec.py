"""The codec endpoint: lets the Temporal Web UI and `temporal workflow show --codec-endpoint` read runs
whose payloads are encrypted. Mounted at /codec as its own small app so its CORS rule (the Web UI's origin
only) applies to nothing else."""

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from keel.codec import CodecKeyError, EncryptionCodec


def codec_app(codec: EncryptionCodec, web_ui_origin: str | None, dependencies: Sequence[Any] = ()) -> FastAPI:
    # `dependencies`: the gateway's authentication when it is on (CORS preflights pass without it).
    # `web_ui_origin` None (no Web UI address known): no browser origin is allowed at all.
    app = FastAPI(
        title="Keel codec", docs_url=None, redoc_url=None, openapi_url=None, dependencies=list(dependencies)
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[_origin(web_ui_origin)] if web_ui_origin else [],
        allow_methods=["POST"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        allow_credentials=True,
    )

    async def transcode(request: Request, encode: bool) -> Response:
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as err:
            return JSONResponse({"detail": f"not a Payloads JSON body: {err}"}, 400)
        try:
            result = await (codec.encode if encode else codec.decode)(payloads.payloads)
        except CodecKeyError as err:
            return JSONResponse({"detail": str(err)}, 400)
        return Response(json_format.MessageToJson(Payloads(payloads=result)), media_type="application/json")

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        return await transcode(request, encode=True)

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        return await transcode(request, encode=False)

    return app


def _origin(url: str) -> str:
    # A browser's Origin is scheme://host[:port]; KEEL_TEMPORAL_UI_URL may carry a path (a UI behind a
    # prefix), which no Origin header ever matches.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url.rstrip("/")
