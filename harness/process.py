"""A repository tool (lab/lab, images/build) run to the end, its output kept for the failure message."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from harness.ansible import REPO


@dataclass
class ToolRun:
    command: str
    returncode: int
    output: str
    seconds: float

    def explain(self) -> str:
        return (
            f"`{self.command}` exit {self.returncode} after {self.seconds:.0f}s; output (tail):\n{self.output[-15000:]}"
        )


def run_tool(tool: str, *args: str, timeout: float, env: Mapping[str, str] | None = None) -> ToolRun:
    """Run `tool` (a path under the repository) with stdout and stderr together."""
    began = time.monotonic()
    result = subprocess.run(
        [str(REPO / tool), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, **(env or {})),
    )
    return ToolRun(" ".join([tool, *args]), result.returncode, result.stdout, time.monotonic() - began)
