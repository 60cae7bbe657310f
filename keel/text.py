"""Shortening text for people to read: summaries, status lines, error messages. Pure; the workflow uses it."""


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int) -> str:
    """Whitespace (newlines included) folded to single spaces, then clipped."""
    return clip(" ".join(text.split()), limit)
