"""Container healthchecks: `python -m keel.stack.healthcheck gateway|worker|heavy-worker`, exit 0 when healthy.

The ports come from the same settings the process itself reads, so a healthcheck can't drift from a changed
KEEL_PORT or metrics port. The gateway is healthy when its `/healthz` answers 200 (Temporal and PostgreSQL
both reachable from it); a worker when its Prometheus endpoint answers, which it serves only once started.
Only the standard library beyond the settings: it runs every few seconds in every container.
"""

import sys
import urllib.error
import urllib.request
from typing import Literal

from keel.settings import Settings, get_settings

Role = Literal["gateway", "worker", "heavy-worker"]
ROLES: tuple[Role, ...] = ("gateway", "worker", "heavy-worker")


def _local(host: str) -> str:
    # A wildcard bind is reachable on loopback; a specific address only on itself.
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def health_url(role: Role, settings: Settings) -> str | None:
    """Where `role` answers when healthy; None when that endpoint is turned off (metrics port 0)."""
    if role == "gateway":
        return f"http://{_local(settings.host)}:{settings.port}/healthz"
    port = settings.worker_metrics_port if role == "worker" else settings.heavy_worker_metrics_port
    return f"http://{_local(settings.worker_metrics_host)}:{port}/metrics" if port else None


def check(role: Role, settings: Settings, timeout: float = 5.0) -> tuple[bool, str]:
    url = health_url(role, settings)
    if url is None:
        return False, f"{role}: its metrics port is 0, so there is nothing to check"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as err:
        return False, f"{url}: {err.code} {err.read(500).decode(errors='replace')}"
    except OSError as err:
        return False, f"{url}: {err}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ROLES:
        print(f"usage: python -m keel.stack.healthcheck {{{'|'.join(ROLES)}}}", file=sys.stderr)
        return 2
    healthy, detail = check(args[0], get_settings())
    print(detail, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
