"""deploy/prometheus/alerts.yml, checked by Prometheus's own `promtool`: the rules parse, and their unit tests
(alerts.test.yml) make every alert fire on a series made for it and stay quiet on one that comes close. Each
alert carries what the docs promise: a severity, a summary, and a runbook_url naming a section that exists in
docs/operations/runbooks.md. That the metrics they read are ones Keel exports is tests/test_dashboard.py's.

promtool is Debian's `prometheus` package (`make test` installs it when it can); without it these tests
skip, saying why, and fail under CI=true.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "operations" / "runbooks.md"
RUNBOOK_PAGE = "operations/runbooks/"
SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        skip_or_fail("promtool is not installed (apt-get install prometheus; `make test` does it)")
    assert tool is not None
    return subprocess.run([tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def heading_anchors(markdown: str) -> set[str]:
    """The ids MkDocs gives the page's headings (lowercased, punctuation dropped, spaces to dashes)."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.+?)\s*$", line):
            slug = re.sub(r"[^\w\s-]", "", match.group(1).lower()).strip()
            anchors.add(re.sub(r"[\s]+", "-", slug))
    return anchors


def test_the_rules_and_the_prometheus_config_are_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    # The config Compose runs, with the rule file it loads.
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_unit_tests_pass() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_broken_expectation_fails_promtool(tmp_path: Path) -> None:
    """The unit tests have teeth: the same file expecting a summary the rule does not write fails."""
    shutil.copy(RULES, tmp_path / "alerts.yml")
    text = RULE_TESTS.read_text().replace("is 4800 ms", "is 4801 ms")
    assert text != RULE_TESTS.read_text()
    (tmp_path / "alerts.test.yml").write_text(text)
    tested = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert tested.returncode != 0 and "4801 ms" in tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts no test makes fire"
    assert names - quiet == set(), "alerts no test checks quiet"
    assert (fires | quiet) - names == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_has_a_severity_a_summary_and_a_runbook(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Keel")
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"]
    page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert page == RUNBOOK_PAGE
    assert anchor == rule["alert"].lower()
    assert anchor in heading_anchors(RUNBOOKS.read_text()), f"no section {rule['alert']} in {RUNBOOKS}"
