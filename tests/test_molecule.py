"""Each Molecule scenario (create, converge, idempotence, side effect, verify, destroy) as one
test, one after another (beside the fleet test): Molecule drives the real systemd containers; this gives
`make test` one summary that counts every scenario, keeps Molecule's output for the
scenario that failed, and prints how long each of its steps took (where CI's time goes)."""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
# Molecule's progress lines: "[<scenario> > <step>] Executing" without colours,
# "<scenario> ➜ <step>: Executing" with them.
STEP_STARTS = re.compile(r"(?:> (\w+)\]|➜ (\w+):) Executing$")
COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def step_durations(lines: list[tuple[float, str]], end: float) -> list[tuple[str, float]]:
    """(step, seconds) from timestamped output lines: each step runs until the next one starts."""
    starts = [
        (m.group(1) or m.group(2), at)
        for at, line in lines
        if (m := STEP_STARTS.search(COLOURS.sub("", line).rstrip()))
    ]
    return [(step, (starts[i + 1][1] if i + 1 < len(starts) else end) - at) for i, (step, at) in enumerate(starts)]


def test_step_durations_split_the_output_at_each_step() -> None:
    lines = [
        (0.0, "INFO     keys ➜ discovery: scenario test matrix: create, converge"),
        (1.0, "INFO     keys ➜ \x1b[33mcreate\x1b[0m: \x1b[36mExecuting\x1b[0m"),
        (4.0, "INFO     keys ➜ create: Executed: Successful"),
        (4.5, "INFO     [keys > converge] Executing\n"),
        (9.0, "ok: [keys-target]"),
    ]
    assert step_durations(lines, end=10.0) == [("create", 3.5), ("converge", 5.5)]


def test_every_role_has_a_scenario() -> None:
    roles = {p.name for p in (REPO / "roles").iterdir() if p.is_dir()}
    assert roles, "no roles found"
    assert roles <= set(SCENARIOS), f"roles without a Molecule scenario: {sorted(roles - set(SCENARIOS))}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PY_COLORS="0", ANSIBLE_FORCE_COLOR="0")
    began = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        ["molecule", "test", "-s", scenario],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as molecule:
        deadline = threading.Timer(20 * 60, molecule.kill)
        deadline.start()
        assert molecule.stdout is not None
        for line in molecule.stdout:
            lines.append((time.monotonic() - began, line))
        returncode = molecule.wait()
        deadline.cancel()
    durations = step_durations(lines, time.monotonic() - began)
    print(f"molecule {scenario}: " + ", ".join(f"{step} {seconds:.0f}s" for step, seconds in durations))
    if returncode != 0:
        output = "".join(line for _, line in lines)
        killed = " (killed after 20 minutes)" if not deadline.is_alive() and returncode < 0 else ""
        pytest.fail(f"molecule test -s {scenario} failed (exit {returncode}){killed}:\n{output[-20000:]}")
