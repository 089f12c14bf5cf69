"""The fleet's Prometheus alert rules (monitoring/): valid for promtool, and their unit tests pass.

promtool comes from Debian's `prometheus` package (scripts/bootstrap-host installs it).
"""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: run scripts/bootstrap-host (Debian package prometheus)"
    return subprocess.run([binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120, check=False)


def test_rules_pass_promtool_check() -> None:
    rules = sorted(str(p.relative_to(MONITORING)) for p in MONITORING.glob("*.yml"))
    assert rules, "no rule files in monitoring/"
    result = promtool("check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_pass() -> None:
    tests = sorted(str(p.relative_to(MONITORING)) for p in (MONITORING / "tests").glob("*.test.yml"))
    assert tests, "no promtool tests in monitoring/tests/"
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = "".join(p.read_text() for p in MONITORING.glob("*.yml"))
    tests = "".join(p.read_text() for p in (MONITORING / "tests").glob("*.test.yml"))
    alerts = {line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")}
    assert alerts
    untested = sorted(a for a in alerts if f"alertname: {a}" not in tests)
    assert not untested, f"alerts without a promtool test: {untested}"
