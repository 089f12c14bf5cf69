"""Every test of the repository, in stages, with a table of how long each took at the end.

    python -m harness.suite            every stage (`make test`, which CI runs)
    python -m harness.suite lint node  only these stages (lint, node, ledger, infra, images)

Every step runs even when an earlier one failed, so one run shows everything that is wrong;
the exit status is non-zero when any step failed. Steps of one stage marked `parallel` run at
the same time (the fleet end to end beside the per-role scenarios: most of their time is
spent waiting on containers and SSH), each into a log under .test-results/ that is printed
when it ends. pytest steps write JUnit XML there too, from which the per-test table is made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / ".test-results"


@dataclass(frozen=True)
class Step:
    group: str
    name: str
    command: list[str]
    cwd: Path = REPO
    parallel: bool = False

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")


def pytest_step(group: str, name: str, *args: str, parallel: bool = False) -> Step:
    junit = f"--junitxml={RESULTS / (name.replace(' ', '-') + '.xml')}"
    return Step(group, name, ["pytest", "-p", "no:cacheprovider", *args, junit], parallel=parallel)


STEPS = [
    Step("lint", "yamllint", ["yamllint", "-s", "."]),
    Step("lint", "ansible-lint", ["ansible-lint"]),
    Step("lint", "ruff", ["ruff", "check", ".", "lab/lab", "images/build"]),
    Step("lint", "mypy", ["mypy"]),
    Step("lint", "mypy node", ["mypy"], REPO / "appliance" / "node"),
    Step("lint", "mypy ledger", ["mypy"], REPO / "appliance" / "ledger"),
    pytest_step("lint", "docs", "-q", "tests/test_docs.py"),
    pytest_step("node", "node tests", "-q", "appliance/node/tests"),
    pytest_step("ledger", "ledger tests", "-q", "appliance/ledger/tests"),
    # -rP: what passing tests print (build and boot times, RTO, the Lynis index, Molecule's step
    # times) stays in the log.
    pytest_step("infra", "fleet", "-v", "-rP", "tests/test_fleet.py", parallel=True),
    # The backup tools' unit tests and the alert rules' promtool tests take seconds: before the scenarios.
    pytest_step(
        "infra",
        "roles",
        "-v",
        "-rP",
        "tests/test_role_checks.py",
        "tests/test_backup_units.py",
        "tests/test_monitoring.py",
        "tests/test_molecule.py",
        parallel=True,
    ),
    # After the fleet and the roles: it builds the appliance image and boots two VMs of it,
    # which would compete with them for the two cores.
    pytest_step(
        "images",
        "images",
        "-v",
        "-rP",
        "tests/test_disk.py",
        "tests/test_manifest.py",
        "tests/test_image.py",
        "tests/test_vagrant.py",
    ),
]


@dataclass
class Outcome:
    step: Step
    returncode: int
    seconds: float


def run(step: Step) -> Outcome:
    print(f"\n== {step.name}: {' '.join(step.command)}", flush=True)
    began = time.monotonic()
    returncode = subprocess.run(step.command, cwd=step.cwd, check=False).returncode
    return Outcome(step, returncode, time.monotonic() - began)


def run_together(steps: list[Step]) -> list[Outcome]:
    """Start the steps at once, each into its log; print each log as its step ends."""
    began = time.monotonic()
    running = []
    for step in steps:
        log = RESULTS / f"{step.slug}.log"
        print(f"\n== {step.name} (in parallel, log {log.relative_to(REPO)}): {' '.join(step.command)}", flush=True)
        out = log.open("w")
        running.append(
            (step, log, out, subprocess.Popen(step.command, cwd=step.cwd, stdout=out, stderr=subprocess.STDOUT))
        )
    outcomes = []
    while running:
        for entry in list(running):
            step, log, out, proc = entry
            if proc.poll() is None:
                continue
            out.close()
            running.remove(entry)
            outcomes.append(Outcome(step, proc.returncode, time.monotonic() - began))
            print(f"\n== {step.name}: finished (exit {proc.returncode}) after {time.monotonic() - began:.0f}s")
            print(log.read_text(), flush=True)
        time.sleep(1)
    return outcomes


def test_cases() -> list[tuple[str, float, str]]:
    """(test id, seconds, outcome) from every JUnit file of this run."""
    cases = []
    for path in sorted(RESULTS.glob("*.xml")):
        for case in ET.parse(path).iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in {"failure", "error"}:
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "skipped"
            name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
            cases.append((name, float(case.get("time", 0)), outcome))
    return cases


def report(outcomes: list[Outcome]) -> int:
    print("\n== durations: steps")
    print(f"  {'step':16} {'seconds':>8}  result")
    for o in outcomes:
        print(f"  {o.step.name:16} {o.seconds:8.1f}  {'ok' if o.returncode == 0 else f'FAILED (exit {o.returncode})'}")
    print(f"  {'total':16} {sum(o.seconds for o in outcomes):8.1f}")
    cases = test_cases()
    long = sorted((c for c in cases if c[1] >= 1.0), key=lambda c: -c[1])
    print("\n== durations: tests (1 s or more; the fleet ran beside the roles' tests)")
    for name, seconds, outcome in long:
        print(f"  {seconds:8.1f}  {outcome:7}  {name}")
    short = [c for c in cases if c[1] < 1.0]
    print(f"  {sum(c[1] for c in short):8.1f}  {len(short)} tests under 1 s each")
    counts = {k: sum(1 for c in cases if c[2] == k) for k in ("passed", "failed", "skipped")}
    failed_steps = [o.step.name for o in outcomes if o.returncode != 0]
    if failed_steps:
        print(f"\nFAILED steps: {', '.join(failed_steps)}")
    print(f"\ntests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
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
    outcomes: list[Outcome] = []
    together: list[Step] = []
    # In the order of STEPS; consecutive parallel steps run together.
    for step in [*chosen, None]:
        if step is not None and step.parallel:
            together.append(step)
            continue
        if together:
            outcomes += run_together(together)
            together = []
        if step is not None:
            outcomes.append(run(step))
    return report(outcomes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
