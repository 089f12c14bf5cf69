"""Each Molecule scenario (create, converge, idempotence, side effect, verify, destroy) as one
test, one after another (beside the fleet test): Molecule drives the real systemd containers; this gives
`make test` one summary that counts every scenario, and keeps Molecule's output for the
scenario that failed."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


def test_every_role_has_a_scenario() -> None:
    roles = {p.name for p in (REPO / "roles").iterdir() if p.is_dir()}
    assert roles, "no roles found"
    assert roles <= set(SCENARIOS), f"roles without a Molecule scenario: {sorted(roles - set(SCENARIOS))}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PY_COLORS="0", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(
        ["molecule", "test", "-s", scenario],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=20 * 60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"molecule test -s {scenario} failed (exit {result.returncode}):\n{result.stdout[-20000:]}")
