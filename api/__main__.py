"""`python -m api` serves the gateway on KEEL_HOST:KEEL_PORT (127.0.0.1:8000 by default)."""

import uvicorn

from keel.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run("api.app:create_app", factory=True, host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
