"""The real Vercel AI SDK client, installed from npm into tests/node (`make test` runs npm ci there): where
it is, and a skip (a failure under CI) when it is not there to drive."""

import shutil
from pathlib import Path

from tests.conftest import skip_or_fail

NODE_DIR = Path(__file__).parent / "node"
# Each major version under its own name (tests/node/package.json): ai@5, ai@6, ai@7.
PACKAGES = ("ai5", "ai6", "ai7")


def require_ai_sdk() -> None:
    """Skips (fails under CI) unless Node and every pinned `ai` package are installed."""
    if shutil.which("node") is None:
        skip_or_fail("node is not installed, so the AI SDK client cannot run")
    if not all((NODE_DIR / "node_modules" / pkg / "package.json").exists() for pkg in PACKAGES):
        skip_or_fail("the AI SDK packages are not installed (make test runs npm ci in tests/node)")
