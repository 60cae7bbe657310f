"""`keel new DIR` writes a project that works as it is: its own tests pass with `pytest` run in DIR (this
venv's, where Keel is installed), and `keel check --app agents` run there finds its agent. A folder that
is not empty is refused, and left as it was."""

import os
import subprocess
import sys
from pathlib import Path

KEEL = Path(sys.executable).parent / "keel"


def keel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KEEL), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def project_env() -> dict[str, str]:
    """The environment a person has in a new terminal: none of this session's Keel or pytest settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "PYTEST_"))}


def test_a_new_project_passes_its_own_tests_and_keel_check(tmp_path: Path) -> None:
    made = keel("new", "shop", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    project = tmp_path / "shop"
    written = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert written == [".gitignore", "README.md", "agents.py", "pyproject.toml", "tests/test_agents.py"]
    assert 'name = "shop"' in (project / "pyproject.toml").read_text()
    assert "keel dev --app agents" in (project / "README.md").read_text()

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout

    checked = subprocess.run(
        [str(KEEL), "check", "--app", "agents"],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "support: KEEL_MODEL; lookup_order" in checked.stdout
    assert "agents: 1 agent(s), ready to serve" in checked.stdout


def test_keel_new_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    refused = keel("new", str(tmp_path), cwd=tmp_path)

    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        == f"keel: {tmp_path} is not empty; keel new writes into a new or empty folder only"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_keel_new_writes_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()

    made = keel("new", "bot", cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    assert 'name = "bot"' in (tmp_path / "bot" / "pyproject.toml").read_text()


def test_from_a_checkout_the_new_readme_says_to_install_keel_from_it(tmp_path: Path) -> None:
    project = tmp_path / "shop"

    assert keel("new", str(project), cwd=tmp_path).returncode == 0

    checkout = Path(__file__).resolve().parents[1]
    assert f"pip install -e '{checkout}[embedded,testing]'" in (project / "README.md").read_text()
