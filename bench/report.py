"""What a benchmark section reports, and the markdown and JSON it is written as.

Every figure is measured against a baseline taken in the same run (a ratio, or a percentile next to the
baseline's), so the table means the same on a noisy 2-core box as on a big server.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured number. `baseline` is what it is compared with (same unit), `target` the claim
    (e.g. "≤ 1.15"), `met` whether the value meets it (None when there is no target)."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""


@dataclass
class Section:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Set when the section crashed: the table says so instead of the whole benchmark failing.
    error: str | None = None


def at_most(value: float, limit: float) -> tuple[str, bool]:
    """A "≤ limit" target and whether value meets it, for Figure(target=..., met=...)."""
    return f"≤ {_number(limit)}", value <= limit


def at_least(value: float, limit: float) -> tuple[str, bool]:
    return f"≥ {_number(limit)}", value >= limit


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear between the closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def machine() -> dict[str, Any]:
    """The machine the figures were measured on, for the README and the JSON."""
    return {
        "cores": _cores(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def to_markdown(sections: Sequence[Section], host: dict[str, Any], elapsed_s: float) -> str:
    lines = [
        f"Measured {host['date']} on {host['cores']} cores ({host['cpu']}), Python {host['python']}, "
        f"{host['platform']}; `make bench` took {elapsed_s:.0f} s.",
        "",
        "| # | Figure | Value | Baseline | Target | Met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for index, section in enumerate(sections, 1):
        if section.error:
            lines.append(f"| {index} | **{section.title}**: failed: {_cell(section.error)} | | | | ✗ |")
            continue
        lines.append(f"| {index} | **{section.title}** | | | | |")
        for f in section.figures:
            name = f.name + (f" ({f.note})" if f.note else "")
            baseline = "" if f.baseline is None else f"{_number(f.baseline)} {f.unit}"
            met = "" if f.met is None else ("✓" if f.met else "✗")
            lines.append(
                f"| | {_cell(name)} | {_number(f.value)} {f.unit} | {baseline} | {f.target or ''} | {met} |"
            )
    notes = [(s.title, n) for s in sections for n in s.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{title}**: {note}" for title, note in notes]
    return "\n".join(lines) + "\n"


def to_json(sections: Sequence[Section], host: dict[str, Any], elapsed_s: float) -> str:
    body = {
        "machine": host,
        "elapsed_s": round(elapsed_s, 1),
        "sections": [asdict(s) for s in sections],
    }
    # NaN is not JSON: a figure that could not be measured is null.
    return json.dumps(_finite(body), indent=2, ensure_ascii=False) + "\n"


def write(
    out_dir: Path, sections: Sequence[Section], host: dict[str, Any], elapsed_s: float, name: str = "latest"
) -> str:
    """Write <name>.md and <name>.json into out_dir; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(sections, host, elapsed_s)
    (out_dir / f"{name}.md").write_text(markdown)
    (out_dir / f"{name}.json").write_text(to_json(sections, host, elapsed_s))
    return markdown


def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    magnitude = abs(value)
    if magnitude >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _cores() -> int:
    # The cores this process may run on (a container's limit), not the host's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
