"""Keel's tools. Importing this package registers every built-in tool in `TOOLS`."""

import importlib

from activities.tools import assistant, builtin, learnpack  # noqa: F401  (imported for registration)
from activities.tools.registry import TOOLS, Tool, ToolContext, ToolError

__all__ = ["TOOLS", "Tool", "ToolContext", "ToolError", "load_tool_modules"]


def load_tool_modules(names: list[str]) -> None:
    """Import the modules that register your own tools (KEEL_TOOL_MODULES)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise SystemExit(f"KEEL_TOOL_MODULES: cannot import {name!r}: {err}") from None
