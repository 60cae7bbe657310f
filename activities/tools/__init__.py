"""Keel's tools. Importing this package registers every built-in tool in `TOOLS`."""

from activities.tools import assistant, builtin, learnpack  # noqa: F401  (imported for registration)
from activities.tools.registry import TOOLS, Tool, ToolContext, ToolError

__all__ = ["TOOLS", "Tool", "ToolContext", "ToolError"]
