"""`python -m api` serves the gateway on KEEL_HOST:KEEL_PORT (127.0.0.1:8000 by default)."""

import uvicorn
from temporalio.runtime import Runtime, TelemetryConfig

from api.auth import check_startup
from api.connections import request_read_deadline_protocol
from keel.observability.logs import configure_logging, temporal_core_logging
from keel.observability.tracing import configure_tracing
from keel.settings import get_settings
from keel.temporal import temporal_connect_options


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, "gateway")
    # The Temporal client's core logs in JSON too; set before any client exists.
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=temporal_core_logging())))
    check_startup(settings)  # KEEL_AUTH=none only on loopback; jwt needs a key
    temporal_connect_options(settings)  # a half-configured TLS or API key stops here, in one line
    tracing = configure_tracing("keel-gateway")
    try:
        # log_config=None: uvicorn's own lines go through the JSON handler too.
        uvicorn.run(
            "api.application:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,
            # uvicorn's parser with a deadline for reading each request: a stalled client is closed.
            http=request_read_deadline_protocol(settings.request_read_timeout_s),
            # uvicorn types it int, but it only hands it to loop.call_later: any seconds work.
            timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        )
    finally:
        if tracing is not None:
            tracing.shutdown()


if __name__ == "__main__":
    main()
