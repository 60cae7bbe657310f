"""`keel new DIR`: a small project of your own on Keel, ready to run, test and change.

It writes the files of `keel/cli/scaffold_template/` (packaged with Keel): `agents.py` with one agent and one
tool, `tests/test_agents.py` testing them with keel.testing, a `pyproject.toml` and a README with the
commands. Two placeholders are filled in: `{{name}}`, the project's name (DIR's), and `{{keel_source}}`,
where to install Keel from (Keel is not on PyPI): this checkout of Keel when Keel runs from one, else a
placeholder the README asks you to replace.
"""

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

TEMPLATE = "scaffold_template"
# Files whose name a packaged template can't carry as is (setuptools' package-data skips dotfiles).
RENAMED = {"gitignore": ".gitignore"}
_CHECKOUT = Path(__file__).resolve().parents[2]  # keel/cli/scaffold.py -> the checkout


class ScaffoldError(Exception):
    """Why `keel new` wrote nothing; one line for the person who typed the command."""


def create_project(folder: Path) -> list[Path]:
    """Write a new project into `folder` (new, or empty); returns the files written, in order."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "not empty"
        raise ScaffoldError(f"{folder} is {what}; keel new writes into a new or empty folder only")
    values = {"name": project_name(folder), "keel_source": keel_source()}
    written = []
    for relative, text in template_files():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_filled(text, values))
        written.append(target)
    return written


def template_files() -> list[tuple[Path, str]]:
    """Every file of the template: where it goes in the new project, and its text."""
    files: list[tuple[Path, str]] = []

    def walk(node: Traversable, relative: Path) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name.startswith(".") or child.name == "__pycache__":
                continue  # caches a tool left in Keel's own copy
            if child.is_dir():
                walk(child, relative / child.name)
            else:
                files.append((relative / RENAMED.get(child.name, child.name), child.read_text()))

    walk(resources.files("keel.cli") / TEMPLATE, Path())
    return files


def project_name(folder: Path) -> str:
    """A package name from the folder's name (PEP 503 normalized: lower case, runs of -_. become -)."""
    name = re.sub(r"[-_.]+", "-", folder.resolve().name).strip("-").lower()
    return re.sub(r"[^a-z0-9-]", "", name) or "agents"


def keel_source() -> str:
    """Where the new project's README tells you to install Keel from."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "keel").is_dir():
        return str(_CHECKOUT)
    return "/path/to/keel"  # an installed Keel: its checkout or wheel is somewhere only you know


def _filled(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text
