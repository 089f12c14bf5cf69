"""The top-level Vagrantfile: Vagrant itself parses and validates it (no VM is started)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_vagrantfile_validates() -> None:
    result = subprocess.run(["vagrant", "validate"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrantfile_rejects_a_broken_provider_setting(tmp_path: Path) -> None:
    """validate really reads the provider block: an unknown libvirt setting fails it."""
    broken = (REPO / "Vagrantfile").read_text().replace("libvirt.cpus = 1", "libvirt.cpus_typo = 1")
    assert broken != (REPO / "Vagrantfile").read_text()
    (tmp_path / "Vagrantfile").write_text(broken)
    result = subprocess.run(
        ["vagrant", "validate"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "cpus_typo" in result.stdout + result.stderr
