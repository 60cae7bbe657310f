"""The manual builds, its generated references cover the code, and no link in it or in the README is broken.

The site is built as `make docs` builds it: `mkdocs build --strict`, which fails on a link or an anchor
between pages that does not exist, a page left out of the nav and a link out of docs/ that the site does
not serve (docs/hooks/reference.py). Then every relative link of README.md and of docs/ is followed here to
a file of the repository, and its anchor to an id of the built page (or, for a Markdown file outside the
site, to one of its headings as GitHub names them), so the links work on GitHub as well as on the site.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keel.cli.main import build_parser
from keel.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# A link's target in Markdown: [text](target) or ![alt](target), once code is taken out of the text.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def build_site(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site_dir)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        # Material's notice about its own future is not a warning of the build; it only adds noise.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=110,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    built = build_site(ROOT / "mkdocs.yml", site_dir)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return site_dir


def manual_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def built_page(site_dir: Path, page: Path, docs: Path = DOCS) -> Path:
    """Where MkDocs writes a page of docs/: docs/a/b.md -> a/b/index.html, docs/index.md -> index.html."""
    relative = page.relative_to(docs).with_suffix("")
    folder = relative.parent if relative.name == "index" else relative
    return site_dir / folder / "index.html"


def ids_of(html: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', html.read_text()))


def github_anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", markdown.read_text()), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        anchors.add(re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-"))
    return anchors


def links_in(markdown: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", markdown.read_text()))
    return [target for target in LINK.findall(text) if not SCHEME.match(target)]


def broken_links(markdown: Path, site_dir: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of `markdown` (a file of the repository at `root`) whose file or anchor does not
    exist, said in a sentence."""
    broken = []
    for target in links_in(markdown):
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        if not file.is_relative_to(root) or not file.exists():
            broken.append(f"{markdown.relative_to(root)}: {target} (no such file)")
        elif anchor and anchor not in anchors_of(file, site_dir, root / "docs"):
            broken.append(f"{markdown.relative_to(root)}: {target} (no such anchor)")
    return broken


def anchors_of(file: Path, site_dir: Path, docs: Path) -> set[str]:
    if file.suffix != ".md":
        return set()
    if file.is_relative_to(docs):
        return ids_of(built_page(site_dir, file, docs))
    return github_anchors(file)


def test_the_manual_builds_offline_in_strict_mode(site: Path) -> None:
    for page in manual_pages():
        assert built_page(site, page).exists(), f"{page.relative_to(ROOT)} was not built"
    # The benchmark results are served from bench/results/latest.md itself, never copied into docs/.
    results = site / "operations" / "benchmark-results" / "index.html"
    assert "Durability tax" in results.read_text()
    # Nothing is fetched when a reader opens the site: Material's Google Fonts are off.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_every_relative_link_of_the_readme_and_the_manual_resolves(site: Path) -> None:
    broken = [
        problem for page in [ROOT / "README.md", *manual_pages()] for problem in broken_links(page, site)
    ]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_stays_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_setting_is_documented_from_its_description(site: Path) -> None:
    page = site / "reference" / "configuration" / "index.html"
    ids = ids_of(page)
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description: it is its documentation"
        variable = str(field.validation_alias)
        assert variable.lower() in ids, f"{variable} is missing from the configuration reference"


def test_every_endpoint_is_documented_from_the_openapi_schema(site: Path) -> None:
    from api.application import create_app

    text = (site / "reference" / "http-api" / "index.html").read_text()
    schema = create_app(Settings.model_construct()).openapi()
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in text, (
                f"{method.upper()} {path} is missing from the HTTP API page"
            )
    for model in schema["components"]["schemas"]:
        assert f'id="{model.lower()}"' in text, f"schema {model} is missing from the HTTP API page"


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    """`keel`, `keel run`, ..., `keel api-key create`: the parser's commands, subcommands included."""
    names = [parser.prog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names += [name for sub in action.choices.values() for name in command_names(sub)]
    return names


def test_every_command_is_documented_from_the_parser(site: Path) -> None:
    ids = ids_of(site / "reference" / "cli" / "index.html")
    for command in command_names(build_parser()):
        assert command.replace(" ", "-") in ids, f"`{command}` is missing from the CLI reference"


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("## A heading\n\n[fine](#a-heading) [gone](docs/nowhere.md) [lost](#no-such-heading)\n")
    assert broken_links(readme, tmp_path / "site", root=tmp_path) == [
        "README.md: docs/nowhere.md (no such file)",
        "README.md: #no-such-heading (no such anchor)",
    ]


def test_a_broken_link_between_pages_fails_the_strict_build(tmp_path: Path) -> None:
    """On a copy of the manual with one link to a page that does not exist."""
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "bench" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "results" / "latest.md", copy / "bench" / "results")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [a page that is not there](nowhere.md).\n")
    built = build_site(copy / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0, built.stdout + built.stderr
    assert "nowhere.md" in built.stdout + built.stderr
