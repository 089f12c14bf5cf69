"""Every test of the repository, in stages, with a table of how long each took at the end.

    python -m harness.suite            every stage (`make test`, which CI runs)
    python -m harness.suite lint node  only these stages (lint, node, ledger, infra, images)

Every step runs even when an earlier one failed, so one run shows everything that is wrong;
the exit status is non-zero when any step failed. The steps run in two lanes at once, one
step after the other within a lane, each into a log under .test-results/ that is printed when
it ends: the packages' tests, the fleet end to end and the image's VMs in one; the image
build, the linters and the per-role scenarios in the other. Most of the fleet's and the
scenarios' time is spent waiting on containers and SSH, so the two cores stay busy. A step
with `after` starts once that step has ended (when it is part of the run). pytest steps
write JUnit XML there too, from which the per-test table is made; the output ends with the
failed steps and tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / ".test-results"
# The two lanes: containers and VMs the tests bring up, and everything else.
MACHINES = "machines"
OTHERS = "others"


@dataclass(frozen=True)
class Step:
    group: str
    name: str
    command: list[str]
    cwd: Path = REPO
    lane: str = OTHERS
    after: str = ""  # the name of a step that must have ended first
    env: tuple[tuple[str, str], ...] = ()

    @property
    def slug(self) -> str:
        return slug(self.name)

    @property
    def log(self) -> Path:
        return RESULTS / f"{self.slug}.log"


def slug(name: str) -> str:
    """A step's name as it names its files under RESULTS."""
    return name.replace(" ", "-")


def pytest_step(group: str, name: str, *args: str, **options: Any) -> Step:
    junit = f"--junitxml={RESULTS / (slug(name) + '.xml')}"
    return Step(group, name, ["pytest", "-p", "no:cacheprovider", *args, junit], **options)


# The packages' tests, then the fleet, start at once beside the image build and the linters
# (so that the image's VMs boot right after the fleet, two VMs under TCG keeping both cores
# busy while the scenarios end); the two lanes take about as long as each other.
STEPS = [
    pytest_step("node", "node tests", "-q", "appliance/node/tests", lane=MACHINES),
    pytest_step("ledger", "ledger tests", "-q", "appliance/ledger/tests", lane=MACHINES),
    pytest_step(
        "images",
        "image build",
        "-v",
        "-rP",
        "-m",
        "not boot",
        "tests/test_disk.py",
        "tests/test_manifest.py",
        "tests/test_image.py",
        "tests/test_vagrant.py",
    ),
    Step("lint", "yamllint", ["yamllint", "-s", "."]),
    Step("lint", "ansible-lint", ["ansible-lint"]),
    Step("lint", "ruff", ["ruff", "check", ".", "lab/lab", "images/build"]),
    Step("lint", "mypy", ["mypy"]),
    Step("lint", "mypy node", ["mypy"], REPO / "appliance" / "node"),
    Step("lint", "mypy ledger", ["mypy"], REPO / "appliance" / "ledger"),
    pytest_step("lint", "docs", "-q", "tests/test_docs.py"),
    # -rP: what passing tests print (build and boot times, RTO, the Lynis index, Molecule's step
    # times) stays in the log.
    pytest_step("infra", "fleet", "-v", "-rP", "tests/test_fleet.py", lane=MACHINES),
    # The harness's, the backup tools' unit tests and the alert rules' promtool tests take
    # seconds: before the scenarios.
    pytest_step(
        "infra",
        "roles",
        "-v",
        "-rP",
        "tests/test_suite.py",
        "tests/test_role_checks.py",
        "tests/test_backup_units.py",
        "tests/test_monitoring.py",
        "tests/test_molecule.py",
    ),
    pytest_step(
        "images",
        "image boot",
        "-v",
        "-rP",
        "-m",
        "boot",
        "tests/test_image.py",
        lane=MACHINES,
        after="image build",
        env=(("RINGMESH_IMAGE_REUSE", "1"),),
    ),
]


@dataclass
class Outcome:
    step: Step
    returncode: int
    seconds: float


def step_env(step: Step) -> dict[str, str]:
    return {**os.environ, **dict(step.env)}


@dataclass
class Running:
    step: Step
    out: IO[str]
    process: subprocess.Popen[bytes]
    began: float


def ready(step: Step, pending: list[Step], running: dict[str, Running]) -> bool:
    """Its lane is free, no earlier step of its lane waits, and its `after` step has ended."""
    if step.lane in running or any(s.lane == step.lane for s in pending[: pending.index(step)]):
        return False
    unfinished = {s.name for s in pending} | {r.step.name for r in running.values()}
    return step.after not in unfinished


def start(step: Step) -> Running:
    command = " ".join(step.command)
    print(f"\n== {step.name} (lane {step.lane}, log {step.log.relative_to(REPO)}): {command}", flush=True)
    out = step.log.open("w")
    process = subprocess.Popen(step.command, cwd=step.cwd, env=step_env(step), stdout=out, stderr=subprocess.STDOUT)
    return Running(step, out, process, time.monotonic())


def run_lanes(steps: list[Step]) -> list[Outcome]:
    """Run the steps' lanes at the same time, each lane's steps one after the other; print
    each step's log as it ends."""
    pending, running, outcomes = list(steps), dict[str, Running](), []
    while pending or running:
        for step in [s for s in pending if ready(s, pending, running)]:
            pending.remove(step)
            running[step.lane] = start(step)
        for lane, entry in list(running.items()):
            if entry.process.poll() is None:
                continue
            entry.out.close()
            del running[lane]
            seconds = time.monotonic() - entry.began
            outcomes.append(Outcome(entry.step, entry.process.returncode, seconds))
            print(f"\n== {entry.step.name}: finished (exit {entry.process.returncode}) after {seconds:.0f}s")
            print(entry.step.log.read_text(), flush=True)
        if pending and not running and not any(ready(s, pending, running) for s in pending):
            raise RuntimeError(f"harness.suite: steps wait on each other: {[s.name for s in pending]}")
        time.sleep(1)
    return outcomes


@dataclass(frozen=True)
class Case:
    name: str
    seconds: float
    outcome: str  # passed, failed or skipped
    message: str = ""  # the first line of a failure's or an error's message


def test_cases() -> list[Case]:
    """Every test case of every JUnit file of this run."""
    cases = []
    for path in sorted(RESULTS.glob("*.xml")):
        for case in ET.parse(path).iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in {"failure", "error"}:
                    outcome = "failed"
                    message = message or (child.get("message") or child.text or "").strip().partition("\n")[0]
                elif child.tag == "skipped":
                    outcome = "skipped"
            name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
            cases.append(Case(name, float(case.get("time", 0)), outcome, message[:300]))
    return cases


def report(outcomes: list[Outcome], wall_seconds: float) -> int:
    print("\n== durations: steps")
    print(f"  {'step':16} {'lane':8} {'seconds':>8}  result")
    for o in outcomes:
        result = "ok" if o.returncode == 0 else f"FAILED (exit {o.returncode})"
        print(f"  {o.step.name:16} {o.step.lane:8} {o.seconds:8.1f}  {result}")
    print(f"  {'wall clock':16} {'':8} {wall_seconds:8.1f}")
    cases = test_cases()
    long = sorted((c for c in cases if c.seconds >= 1.0), key=lambda c: -c.seconds)
    print("\n== durations: tests (1 s or more; the two lanes ran at the same time)")
    for case in long:
        print(f"  {case.seconds:8.1f}  {case.outcome:7}  {case.name}")
    short = [c for c in cases if c.seconds < 1.0]
    print(f"  {sum(c.seconds for c in short):8.1f}  {len(short)} tests under 1 s each")
    counts = {k: sum(1 for c in cases if c.outcome == k) for k in ("passed", "failed", "skipped")}
    print(f"\ntests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    # Last, so that the end of a long run's output says what failed and where to read why.
    failed_steps = [o for o in outcomes if o.returncode != 0]
    for o in failed_steps:
        print(f"FAILED step {o.step.name}: exit {o.returncode}; its whole output: {o.step.log.relative_to(REPO)}")
    for case in (c for c in cases if c.outcome == "failed"):
        print(f"FAILED {case.name}: {case.message}")
    return 1 if failed_steps or counts["failed"] else 0


def main(groups: list[str]) -> int:
    known = sorted({s.group for s in STEPS})
    unknown = [g for g in groups if g not in known]
    if unknown:
        print(f"harness.suite: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(known)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for old in RESULTS.glob("*.xml"):
        old.unlink()
    os.environ.setdefault("PY_COLORS", "0")
    chosen = [step for step in STEPS if not groups or step.group in groups]
    began = time.monotonic()
    outcomes = run_lanes(chosen)
    return report(outcomes, time.monotonic() - began)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
