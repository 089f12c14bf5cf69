"""The backup role's pure pieces, without hosts: the ring, derived secrets, schedules,
archive times, the allow list and the metrics file of ringmesh-backup."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROLE = Path(__file__).resolve().parent.parent / "roles" / "backup"


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ring = load("backup_ring", ROLE / "filter_plugins" / "backup_ring.py")
tool = load("ringmesh_backup", ROLE / "files" / "ringmesh_backup.py")


@pytest.mark.parametrize("size", range(2, 9))
@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_member_holds_as_many_clients_as_it_has_peers(size: int, count: int) -> None:
    members = [f"relay{i}" for i in range(size)]
    k = min(count, size - 1)
    for member in members:
        peers = ring.backup_peers_of(members, member, count)
        assert len(peers) == len(set(peers)) == k and member not in peers
        assert len(ring.backup_clients_of(members, member, count)) == k
        for peer in peers:
            assert member in ring.backup_clients_of(members, peer, count)


def test_the_ring_follows_inventory_order_and_ignores_unknown_names() -> None:
    assert ring.backup_peers_of(["a", "b", "c"], "c", 2) == ["a", "b"]
    assert ring.backup_peers_of(["a", "b", "c"], "x", 2) == []


def test_derived_secrets_differ_per_tool_and_host_and_need_the_secret() -> None:
    secret = "s" * 40
    values = {ring.backup_derive_secret(secret, t, h) for t in ("borg", "restic") for h in ("r1", "r2")}
    assert len(values) == 4 and all(len(v) == 64 for v in values)
    assert ring.backup_derive_secret(secret, "borg", "r1") != ring.backup_derive_secret("t" * 40, "borg", "r1")
    assert ring.backup_derive_secret("", "borg", "r1") == ""


BOOKWORM = """  Original form: hourly
Normalized form: *-*-* *:00:00
    Next elapse: Mon 2026-11-23 21:00:00 UTC
       From now: 17min left
       Iter. #2: Mon 2026-11-23 22:00:00 UTC
"""
TRIXIE = """  Original form: weekly
Normalized form: Mon *-*-* 00:00:00
    Next elapse: Mon 2026-11-30 00:00:00 UTC
       From now: 3 days left
   Iteration #2: Mon 2026-12-07 00:00:00 UTC
"""


def test_calendar_interval_reads_both_systemd_versions() -> None:
    assert ring.backup_calendar_interval(BOOKWORM) == 3600
    assert ring.backup_calendar_interval(TRIXIE) == 7 * 86400
    with pytest.raises(ValueError):
        ring.backup_calendar_interval("  Original form: hourly\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T20:52:01.000000", 1795467121.0),  # borg: naive, UTC on the relays
        ("2026-11-23T20:52:01.775920123Z", 1795467121.77592),  # restic: nanoseconds and Z
        ("2026-11-23T21:52:01.775920123+01:00", 1795467121.77592),
    ],
)
def test_archive_times_parse(text: str, expected: float) -> None:
    assert tool.parse_time(text) == pytest.approx(expected)


def test_json_documents_reads_whole_documents_and_json_lines() -> None:
    assert list(tool.json_documents('[{"a": 1}]')) == [[{"a": 1}]]
    assert list(tool.json_documents('{"a": 1}\nnot json\n{"b": 2}\n')) == [{"a": 1}, {"b": 2}]
    assert list(tool.json_documents("")) == []


def make_config(tmp_path: Path, hooks: list[dict[str, object]] | None = None) -> Any:
    config = {
        "hooks": hooks or [],
        "client": "relay1",
        "sources": [str(tmp_path / "etc"), str(tmp_path / "state")],
        "allowed_files": [f"{tmp_path}/etc/*", f"{tmp_path}/state/keys/*"],
        "excludes": [str(tmp_path / "state" / "control.sock")],
        "repositories": [
            {"name": "relay2", "tool": "borg"},
            {"name": "relay2", "tool": "restic", "url": "rclone:relay1"},
        ],
        "borgmatic_dir": "/etc/ringmesh-backup/borgmatic.d",
        "restic_password_file": "/x",
        "restic_cache_dir": "/x",
        "restic_check_subset": "10%",
        "state_file": str(tmp_path / "state.json"),
        "metrics_dir": str(tmp_path / "metrics"),
        "intervals": {"backup": 3600},
        "ringmesh": "/x",
        "node_user": "ringmesh",
        "timeout_seconds": 60,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return tool.Config.load(path)


def test_files_outside_the_allow_list_stop_the_backup_naming_them(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "node.toml").write_text("")
    (tmp_path / "state" / "keys").mkdir(parents=True)
    (tmp_path / "state" / "keys" / "identity.key").write_bytes(b"k" * 32)
    (tmp_path / "state" / "control.sock").write_text("")
    config = make_config(tmp_path)
    tool.verify_sources(config)  # only allowed files, the excluded socket ignored
    (tmp_path / "state" / "mailbox.spool").write_text("message")
    with pytest.raises(tool.BackupError, match=r"mailbox\.spool"):
        tool.verify_sources(config)


def test_metrics_name_each_repository_and_the_intervals(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    state = {"borg@relay2": tool.RepoState(backup=tool.Outcome(last_success=5.0, success=1), size_bytes=42.0)}
    text = tool.render_metrics(config, state)
    assert 'ringmesh_backup_last_success_timestamp_seconds{tool="borg",repository="relay2"} 5.0' in text
    assert 'ringmesh_backup_repository_size_bytes{tool="borg",repository="relay2"} 42.0' in text
    assert 'ringmesh_backup_last_run_success{tool="restic",repository="relay2"} 0' in text
    assert 'ringmesh_backup_interval_seconds{kind="backup"} 3600' in text
    tool.save_state(config, state)
    assert (tmp_path / "metrics" / "ringmesh_backup.prom").read_text() == text
    assert tool.load_state(config)["borg@relay2"].size_bytes == 42.0


def write_hook(tmp_path: Path, body: str) -> str:
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nset -eu\n{body}\n")
    hook.chmod(0o755)
    return str(hook)


def test_a_hook_runs_before_the_backup_and_what_it_writes_is_backed_up(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "state").mkdir()
    out = tmp_path / "ledger-backup"
    command = write_hook(tmp_path, f"mkdir -p {out}; echo snapshot > {out}/etcd.snapshot")
    config = make_config(tmp_path, [{"name": "ledger", "command": command, "paths": [str(out)]}])
    assert str(out) not in config.source_paths()  # nothing there before the hook ran
    tool.run_hooks(config)
    assert str(out) in config.source_paths()
    tool.verify_sources(config)  # the hook's files need no entry in the allow list


def test_a_failing_hook_stops_the_backup_naming_it(tmp_path: Path) -> None:
    command = write_hook(tmp_path, "echo 'etcd: connection refused' >&2; exit 3")
    config = make_config(tmp_path, [{"name": "ledger", "command": command, "paths": [str(tmp_path / "out")]}])
    with pytest.raises(tool.BackupError, match=r"backup hook ledger .* exited 3: etcd: connection refused"):
        tool.run_hooks(config)
    missing = make_config(tmp_path, [{"name": "gone", "command": str(tmp_path / "nope"), "paths": []}])
    with pytest.raises(tool.BackupError, match=r"backup hook gone .* did not run"):
        tool.run_hooks(missing)


def test_jobs_of_the_two_tools_run_one_after_the_other(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    events: list[str] = []

    def job(name: str) -> None:
        with tool.one_job_at_a_time(config):
            events.append(f"{name} begins")
            time.sleep(0.3)
            events.append(f"{name} ends")

    jobs = [threading.Thread(target=job, args=(name,)) for name in ("borg", "restic")]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join()
    first, second = (events[0].split()[0], "restic" if events[0].startswith("borg") else "borg")
    assert events == [f"{first} begins", f"{first} ends", f"{second} begins", f"{second} ends"]


# ringmesh-backup adopts what its tools leave behind; run in a child so pytest stays as it is.
ADOPTING = """
import importlib.util, json, os, subprocess, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("ringmesh_backup", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
sys.modules["ringmesh_backup"] = tool
spec.loader.exec_module(tool)
config = tool.Config.load(Path(sys.argv[2]))
if sys.argv[3] == "lingering":  # restic's ssh: still ending when restic has exited
    if sys.argv[4] == "adopt":
        tool.adopt_orphans()
    pid = int(tool.run_tool(["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"], config))
    print(json.dumps({"pid": pid, "alive": os.path.exists(f"/proc/{pid}")}))
else:  # a stray that ignores SIGTERM
    tool.adopt_orphans()
    out = subprocess.run(["sh", "-c", "(trap '' TERM; exec sleep 30) >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    began = time.monotonic()
    tool.reap_strays(0.3)
    pid = int(out)
    print(json.dumps({"pid": pid, "alive": os.path.exists(f"/proc/{pid}"), "took": time.monotonic() - began}))
"""


def adopting(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    make_config(tmp_path)  # writes config.json
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ADOPTING,
            str(ROLE / "files" / "ringmesh_backup.py"),
            str(tmp_path / "config.json"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(done.stdout), done.stderr


def test_a_tool_returns_only_when_what_it_left_running_has_ended(tmp_path: Path) -> None:
    # Without adopting, the leftover outlives the call: systemd would wait on the unit's cgroup.
    assert adopting(tmp_path, "lingering", "no")[0]["alive"] is True
    assert adopting(tmp_path, "lingering", "adopt")[0]["alive"] is False


def test_a_stray_that_ignores_sigterm_is_killed_and_named(tmp_path: Path) -> None:
    result, journal = adopting(tmp_path, "stray")
    assert result["alive"] is False and result["took"] < 5
    pid = result["pid"]
    assert f"sleep (pid {pid}) outlived its tool by 0.3s: sending SIGTERM" in journal
    assert f"sleep (pid {pid}) outlived its tool by 0.3s: sending SIGKILL" in journal
