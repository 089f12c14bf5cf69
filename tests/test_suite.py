"""harness.suite's lanes: each lane's steps one after the other, the lanes at once, and a
step with `after` only once that step has ended (real processes, a few seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import suite


def stamp(tmp_path: Path, name: str, seconds: float) -> list[str]:
    """A command that records when it started and ended, in tmp_path/<name>."""
    code = (
        "import sys, time; start = time.monotonic(); time.sleep(float(sys.argv[2])); "
        "open(sys.argv[1], 'w').write(f'{start} {time.monotonic()}')"
    )
    return [sys.executable, "-c", code, str(tmp_path / name), str(seconds)]


def span(tmp_path: Path, name: str) -> tuple[float, float]:
    start, end = (tmp_path / name).read_text().split()
    return float(start), float(end)


@pytest.fixture(autouse=True)
def results_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "RESULTS", tmp_path)
    monkeypatch.setattr(suite, "REPO", tmp_path)


def test_lanes_run_at_once_and_their_steps_in_order(tmp_path: Path) -> None:
    steps = [
        # a1 lasts long enough that b1 starts before it ends even on a loaded machine.
        suite.Step("t", "a1", stamp(tmp_path, "a1", 3.0), lane="a"),
        suite.Step("t", "b1", stamp(tmp_path, "b1", 0.2), lane="b"),
        suite.Step("t", "a2", stamp(tmp_path, "a2", 0.2), lane="a"),
    ]
    outcomes = suite.run_lanes(steps)
    assert sorted(o.step.name for o in outcomes if o.returncode == 0) == ["a1", "a2", "b1"]
    a1, b1, a2 = span(tmp_path, "a1"), span(tmp_path, "b1"), span(tmp_path, "a2")
    assert b1[0] < a1[1], "lane b waited for lane a"
    assert a2[0] >= a1[1], "a lane ran two steps at once"


def test_a_step_after_another_waits_for_it_across_lanes(tmp_path: Path) -> None:
    steps = [
        suite.Step("t", "build", stamp(tmp_path, "build", 1.0), lane="b"),
        suite.Step("t", "boot", stamp(tmp_path, "boot", 0.1), lane="a", after="build"),
    ]
    suite.run_lanes(steps)
    assert span(tmp_path, "boot")[0] >= span(tmp_path, "build")[1]


def test_a_failed_step_is_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    steps = [
        suite.Step("t", "broken", [sys.executable, "-c", "raise SystemExit(3)"], lane="a"),
        suite.Step("t", "next", stamp(tmp_path, "next", 0.1), lane="a", after="broken"),
    ]
    outcomes = {o.step.name: o.returncode for o in suite.run_lanes(steps)}
    assert outcomes == {"broken": 3, "next": 0}


def test_the_report_ends_with_the_failed_steps_and_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_file = tmp_path / "test_two.py"
    test_file.write_text("def test_good():\n    pass\n\ndef test_bad():\n    assert 1 == 2, 'one is not two'\n")
    step = suite.pytest_step("t", "two tests", "-q", str(test_file), cwd=tmp_path, lane="a")
    outcomes = suite.run_lanes([step])
    assert suite.report(outcomes, 1.0) == 1
    tail = capsys.readouterr().out.rstrip().splitlines()[-3:]
    assert tail[0] == "tests: 1 passed, 1 failed, 0 skipped"
    assert tail[1] == "FAILED step two tests: exit 1; its whole output: two-tests.log"
    assert tail[2].startswith("FAILED test_two::test_bad: AssertionError: one is not two")
