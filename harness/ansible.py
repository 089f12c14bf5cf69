"""ansible-playbook with machine-readable results.

Runs with the `ansible.posix.jsonl` stdout callback: one JSON event per line (play start,
task start, a result per host, the stats at the end), so callers read outcomes from data, not
from the human recap. The events are also written to a log file when one is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"

_RESULT_EVENTS = {
    "v2_runner_on_ok": "ok",
    "v2_runner_on_failed": "failed",
    "v2_runner_on_skipped": "skipped",
    "v2_runner_on_unreachable": "unreachable",
}


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Ansible from the repository's venv, with the repository's ansible.cfg and JSON output."""
    env = dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.jsonl",
        ANSIBLE_SHOW_CUSTOM_STATS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
    )
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class TaskResult:
    play: str
    task: str  # "role : task name" for a role's task
    host: str
    status: str  # ok | failed | skipped | unreachable
    result: dict[str, Any]

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    @property
    def message(self) -> str:
        """The failure message; for a loop, the messages of the items that failed."""
        items = self.result.get("results")
        if isinstance(items, list):
            failed = [str(i.get("msg", "")) for i in items if isinstance(i, dict) and i.get("failed")]
            if failed:
                return "; ".join(failed)
        return str(self.result.get("msg", ""))


@dataclass
class PlaybookRun:
    command: list[str]
    returncode: int
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)
    other_output: list[str] = field(default_factory=list)  # stdout lines that were not events
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per host: ok, changed, failures, unreachable, skipped, rescued, ignored."""
        for event in reversed(self.events):
            if event.get("_event") == "v2_playbook_on_stats":
                return dict(event.get("stats", {}))
        return {}

    @property
    def custom_stats(self) -> dict[str, Any]:
        for event in reversed(self.events):
            if event.get("_event") == "v2_playbook_on_stats":
                return dict(event.get("global_custom_stats", {}))
        return {}

    def results(self) -> Iterator[TaskResult]:
        play = ""
        for event in self.events:
            kind = event.get("_event")
            if kind == "v2_playbook_on_play_start":
                play = str(event["play"]["name"])
            elif kind in _RESULT_EVENTS:
                for host, result in event.get("hosts", {}).items():
                    yield TaskResult(play, str(event["task"]["name"]), host, _RESULT_EVENTS[kind], result)

    def changed(self) -> list[TaskResult]:
        return [r for r in self.results() if r.status == "ok" and r.changed]

    def failed(self) -> list[TaskResult]:
        """Failures that counted (a failure rescued or ignored is not in the stats' failures)."""
        return [
            r for r in self.results() if r.status in {"failed", "unreachable"} and not r.result.get("ignore_errors")
        ]

    def total(self, key: str) -> int:
        return sum(host.get(key, 0) for host in self.stats.values())

    def explain(self) -> str:
        """What a failed assertion about this run should print."""
        lines = [f"`{' '.join(self.command)}` exit {self.returncode} after {self.seconds:.0f}s"]
        for host, counts in sorted(self.stats.items()):
            lines.append(f"  {host}: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        for result in self.failed():
            lines.append(f"  FAILED {result.host} | {result.task}: {result.message[:2000]}")
        for result in self.changed():
            lines.append(f"  changed {result.host} | {result.task}")
        if self.other_output:
            lines.append("  output: " + "\n  ".join(self.other_output[-40:]))
        if self.stderr.strip():
            lines.append("  stderr: " + self.stderr.strip()[-4000:])
        return "\n".join(lines)


def run_playbook(
    playbook: Path | str,
    inventory: Path | str | Sequence[Path | str],
    *,
    limit: str | None = None,
    extra_vars: Mapping[str, Any] | None = None,
    check: bool = False,
    diff: bool = False,
    tags: Sequence[str] = (),
    log: Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 3600,
    env: Mapping[str, str] | None = None,
) -> PlaybookRun:
    """Run ansible-playbook from the repository root and collect its events."""
    inventories = [inventory] if isinstance(inventory, (str, Path)) else list(inventory)
    command = ["ansible-playbook", *(arg for i in inventories for arg in ("-i", str(i))), str(playbook)]
    if limit:
        command += ["--limit", limit]
    if extra_vars:
        command += ["--extra-vars", json.dumps(dict(extra_vars))]
    if check:
        command.append("--check")
    if diff:
        command.append("--diff")
    if tags:
        command += ["--tags", ",".join(tags)]
    began = time.monotonic()
    run = PlaybookRun(command=command, returncode=-1, seconds=0.0)
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=tool_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stderr = proc.stderr
        # stderr is read on a thread so neither pipe can fill up and stall the other.
        stderr_chunks: list[str] = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(stderr.read()))
        reader.start()
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        log_file = log.open("w") if log else None
        try:
            for line in proc.stdout:
                if log_file:
                    log_file.write(line)
                    log_file.flush()
                event = _event(line)
                if event is None:
                    if line.strip():
                        run.other_output.append(line.rstrip())
                    continue
                run.events.append(event)
                if on_event:
                    on_event(event)
            run.returncode = proc.wait()
        finally:
            watchdog.cancel()
            reader.join()
            if log_file:
                log_file.close()
        if time.monotonic() - began >= timeout:
            run.other_output.append(f"killed after {timeout:.0f}s")
        run.stderr = "".join(stderr_chunks)
    run.seconds = time.monotonic() - began
    return run


def _event(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
