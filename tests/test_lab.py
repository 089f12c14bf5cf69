"""The lab end to end: `lab/lab up` twice, the fleet table, `lab/lab down`.

Real containers, real SSH, real ansible-playbook and real ringmesh nodes: the first `up`
provisions a fresh fleet and sends a message between two mesh users; the second must reuse
everything and report changed=0; `down` must leave nothing behind. The tests share one lab
and run in file order; a lab left up by hand is torn down first.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab" / "lab"
NETWORK = "ringmesh-lab"
LABEL = "io.ringmesh.lab"
RELAYS = {"relay1", "relay2", "relay3"}

RECAP = re.compile(
    r"^\s+(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
    re.MULTILINE,
)
FLEET_ROW = re.compile(r"^\s+(relay\d)\s+(did:key:z\S+)\s+(\d+)/(\d+)\s", re.MULTILINE)


@dataclass
class LabRun:
    command: str
    returncode: int
    output: str
    seconds: float

    def explain(self) -> str:
        tail = self.output[-15000:]
        return f"`{self.command}` exit {self.returncode} after {self.seconds:.0f}s; output (tail):\n{tail}"


def lab(*args: str, timeout: float) -> LabRun:
    began = time.monotonic()
    try:
        result = subprocess.run(
            [str(LAB), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = (
            error.stdout.decode(errors="replace")
            if isinstance(error.stdout, bytes)
            else (error.stdout or "")
        )
        pytest.fail(
            f"`lab/lab {' '.join(args)}` did not finish within {timeout:.0f}s; output so far:\n{output[-15000:]}"
        )
    return LabRun(
        f"lab/lab {' '.join(args)}",
        result.returncode,
        result.stdout,
        time.monotonic() - began,
    )


def podman(*args: str) -> str:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=False, timeout=60
    ).stdout


@pytest.fixture(scope="module")
def first_up() -> Iterator[LabRun]:
    lab("down", timeout=300)  # a fresh fleet, so the first run really provisions
    run = lab("up", timeout=45 * 60)
    print(f"first lab up: {run.seconds:.0f}s")
    yield run
    lab(
        "down", timeout=300
    )  # also when a test failed; test_down checks it on the happy path


@pytest.fixture(scope="module")
def second_up(first_up: LabRun) -> LabRun:
    if first_up.returncode != 0:
        pytest.fail("the first lab up failed, see test_first_up_delivers_a_message")
    run = lab("up", timeout=20 * 60)
    print(f"second lab up: {run.seconds:.0f}s")
    return run


def test_first_up_delivers_a_message(first_up: LabRun) -> None:
    assert first_up.returncode == 0, first_up.explain()
    assert "MESSAGE DELIVERED alice -> bob" in first_up.output, first_up.explain()
    assert "acked=True" in first_up.output, first_up.explain()


def test_fleet_table_shows_three_relays_with_two_peers_up(first_up: LabRun) -> None:
    assert first_up.returncode == 0, first_up.explain()
    rows = {
        m.group(1): m for m in FLEET_ROW.finditer(first_up.output.split("FLEET", 1)[-1])
    }
    assert set(rows) == RELAYS, f"fleet table rows {sorted(rows)}\n{first_up.explain()}"
    for host, row in rows.items():
        assert row.group(3) == "2", (
            f"{host}: {row.group(3)}/{row.group(4)} peers up\n{first_up.explain()}"
        )
    assert len({row.group(2) for row in rows.values()}) == 3, (
        f"relays share a did:key\n{first_up.explain()}"
    )


def test_first_up_recap_has_no_failures(first_up: LabRun) -> None:
    recap = RECAP.findall(first_up.output)
    assert {host for host, *_ in recap} == RELAYS | {"user1"}, first_up.explain()
    assert all(
        unreachable == "0" and failed == "0" for _, _, unreachable, failed in recap
    ), first_up.explain()


def test_second_up_changes_nothing(second_up: LabRun) -> None:
    assert second_up.returncode == 0, second_up.explain()
    recap = RECAP.findall(second_up.output)
    assert {host for host, *_ in recap} == RELAYS | {"user1"}, second_up.explain()
    changed = {host: int(n) for host, n, _, _ in recap if n != "0"}
    assert not changed, (
        f"second run changed something: {changed}\n{second_up.explain()}"
    )
    assert re.search(r"relay1\s+\S+\s+reused", second_up.output), second_up.explain()
    assert "MESSAGE DELIVERED alice -> bob" in second_up.output, second_up.explain()


def test_status_reads_every_relay(second_up: LabRun) -> None:
    status = lab("status", timeout=120)
    assert status.returncode == 0, status.explain()
    assert {m.group(1) for m in FLEET_ROW.finditer(status.output)} == RELAYS, (
        status.explain()
    )


def test_down_removes_everything(second_up: LabRun) -> None:
    down = lab("down", timeout=300)
    assert down.returncode == 0, down.explain()
    assert (
        podman(
            "ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}"
        ).split()
        == []
    )
    networks = [
        n["name"]
        for n in json.loads(podman("network", "ls", "--format", "json") or "[]")
    ]
    assert NETWORK not in networks
    assert not (REPO / ".lab").exists()
    left = sorted(p.name for p in (REPO / "inventories" / "lab").iterdir())
    assert left == [".gitignore", "README.md"], left
