"""Backups between three relays: real borg, borgmatic, restic, rclone and sshd in each container.

Each relay holds the other two's repositories (two peers each on a ring of three). The tests
back up, then attack the repositories with each relay's own credentials the way a
compromised relay would, and look at the bytes the peers store.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shlex
import time
from typing import Any

import pytest
import testinfra

from harness.ansible import REPO, PlaybookRun, run_playbook
from harness.backup import STORE, damage_newest
from harness.verify import assert_rejected

RELAYS = ["backup-relay1", "backup-relay2", "backup-relay3"]
CONFIG = "/etc/ringmesh-backup/config.json"
TIMERS = ["ringmesh-backup-borg", "ringmesh-backup-restic", "ringmesh-check-borg", "ringmesh-check-restic"]
SSH = (
    "ssh -o IdentitiesOnly=yes -o UserKnownHostsFile=/etc/ringmesh-backup/ssh/known_hosts"
    " -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10"
)


def relay(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{name}")


def config(host: testinfra.host.Host) -> dict[str, Any]:
    return dict(json.loads(host.file(CONFIG).content_string))


def repository(host: testinfra.host.Host, tool: str, peer: str) -> dict[str, Any]:
    return next(r for r in config(host)["repositories"] if r["tool"] == tool and r["name"] == peer)


def address(name: str) -> str:
    return str(relay(name).check_output("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1"))


def borg(host: testinfra.host.Host, peer: str, args: str) -> Any:
    """borg as the relay itself would run it: its key, its passphrase, its peer."""
    repo = repository(host, "borg", peer)
    env = (
        f"BORG_RSH={shlex.quote(repo['ssh_command'])} BORG_PASSCOMMAND='cat /etc/ringmesh-backup/borg.passphrase'"
        " BORG_BASE_DIR=/var/lib/ringmesh-backup-client/borg BORG_RELOCATED_REPO_ACCESS_IS_OK=yes"
    )
    return host.run(f"{env} borg {args.replace('REPO', repo['url'])}")


def restic(host: testinfra.host.Host, peer: str, args: str) -> Any:
    repo = repository(host, "restic", peer)
    options = " ".join(shlex.quote(o) for o in repo["options"])
    env = "RESTIC_PASSWORD_FILE=/etc/ringmesh-backup/restic.password RESTIC_CACHE_DIR=/tmp/verify-restic-cache"
    return host.run(f"{env} restic -r {shlex.quote(repo['url'])} {options} {args}")


def borg_archives(host: testinfra.host.Host, peer: str) -> list[str]:
    result = borg(host, peer, "list --short REPO")
    assert result.rc == 0, result.stderr
    return sorted(result.stdout.split())


def restic_snapshots(host: testinfra.host.Host, peer: str) -> list[str]:
    result = restic(host, peer, "snapshots --json")
    assert result.rc == 0, result.stderr
    return sorted(s["id"] for s in json.loads(result.stdout))


def tree_digest(peer: testinfra.host.Host, path: str) -> dict[str, str]:
    """sha256 of every file under path on the peer (the repository as stored)."""
    out = peer.check_output(f"cd {path} && find . -type f -print0 | xargs -0 sha256sum")
    return {line.split(maxsplit=1)[1]: line.split()[0] for line in out.splitlines()}


def back_up(name: str) -> None:
    for unit in ("ringmesh-backup-borg", "ringmesh-backup-restic"):
        result = relay(name).run(f"systemctl start {unit}.service")
        assert result.rc == 0, relay(name).run(f"journalctl -u {unit} -n 20 --no-pager").stdout


@pytest.fixture(scope="module", autouse=True)
def backed_up() -> None:
    """Two backups by every relay with each tool, through the role's own units (the relays at
    once: a peer serves two clients at the same time, as it would on the hour)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(RELAYS)) as pool:
        for _ in range(2):
            list(pool.map(back_up, RELAYS))
            time.sleep(1)  # distinct archive names (second resolution)


@pytest.mark.parametrize("name", RELAYS)
def test_timers_are_enabled_with_a_random_delay(name: str) -> None:
    host = relay(name)
    for timer in TIMERS:
        assert host.service(f"{timer}.timer").is_enabled, timer
        delay = host.check_output(f"systemctl show -P RandomizedDelayUSec {timer}.timer")
        assert delay not in ("", "0"), f"{timer}: RandomizedDelayUSec={delay}"
    assert host.check_output("systemctl is-enabled borgmatic.timer || true") == "masked"


@pytest.mark.parametrize("name", RELAYS)
def test_every_repository_reports_a_recent_success_through_node_exporter(name: str) -> None:
    host = relay(name)
    metrics = host.check_output("curl -sf http://127.0.0.1:9100/metrics")
    peers = [other for other in RELAYS if other != name]
    for tool in ("borg", "restic"):
        for peer in peers:
            labels = f'{{repository="{peer}",tool="{tool}"}}'
            assert f"ringmesh_backup_last_run_success{labels} 1" in metrics, metrics[-3000:]
            last = next(
                line
                for line in metrics.splitlines()
                if line.startswith(f"ringmesh_backup_last_success_timestamp_seconds{labels}")
            )
            assert time.time() - float(last.split()[-1]) < 600
            size = next(
                line
                for line in metrics.splitlines()
                if line.startswith(f"ringmesh_backup_repository_size_bytes{labels}")
            )
            assert float(size.split()[-1]) > 0
    assert 'ringmesh_backup_interval_seconds{kind="backup"} 3600' in metrics


@pytest.mark.parametrize("name", RELAYS)
def test_each_peer_holds_exactly_its_clients_repositories(name: str) -> None:
    host = relay(name)
    held = sorted(host.check_output(f"ls {STORE}").split())
    assert held == sorted(other for other in RELAYS if other != name)
    assert host.file(STORE).user == "root"
    for client in held:
        assert host.file(f"{STORE}/{client}").user == "ringmesh-backup"
        assert host.file(f"{STORE}/{client}").mode == 0o700


# Runs on the peer: which needles (hex) occur in which files under a directory.
SCAN = r"""
import json, os, sys
needles = [bytes.fromhex(n) for n in sys.argv[2].split(",")]
hits, scanned = [], 0
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        data = open(os.path.join(root, name), "rb").read()
        scanned += 1
        hits += [os.path.join(root, name) for n in needles if n in data]
print(json.dumps({"scanned": scanned, "hits": sorted(set(hits))}))
"""


def private_key_needles(client: testinfra.host.Host) -> list[bytes]:
    """Byte strings any plaintext copy of the client's private keys would contain."""
    needles = []
    identity = client.file("/var/lib/ringmesh/keys/identity.key").content
    needles += [identity, identity.hex().encode(), base64.b64encode(identity)]
    for path in client.check_output("ls /var/lib/ringmesh/keys/epoch-*.json").split():
        record = json.loads(client.file(path).content_string)
        for field in ("link_seed", "onion_key"):
            needles += [record[field].encode(), bytes.fromhex(record[field])]
    for path in client.check_output("ls /etc/ssh/ssh_host_*_key").split():
        lines = [line for line in client.file(path).content_string.splitlines() if "PRIVATE KEY" not in line]
        needles += [line.encode() for line in lines if len(line) >= 40]
        needles.append(base64.b64decode("".join(lines))[-64:])
    return needles


def scan(host: testinfra.host.Host, path: str, needles: list[bytes]) -> dict[str, Any]:
    result = host.run(f"python3 -c {shlex.quote(SCAN)} {path} {','.join(n.hex() for n in needles)}")
    assert result.rc == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.parametrize("name", RELAYS)
def test_no_private_key_bytes_in_any_file_of_the_peers_repositories(name: str) -> None:
    client = relay(name)
    needles = private_key_needles(client)
    # The scan finds the keys where they are in the clear, so a miss below means something.
    assert scan(client, "/var/lib/ringmesh/keys", needles)["hits"], "the scan does not find the keys in place"
    for peer in (other for other in RELAYS if other != name):
        found = scan(relay(peer), f"{STORE}/{name}", needles)
        assert found["scanned"] >= 10, found
        assert found["hits"] == [], f"{peer} stores {name}'s private key bytes in {found['hits']}"


# One client per borg server version: relay1 (borg 1.4) on relay2 (borg 1.2), and back.
ATTACKS = [("backup-relay1", "backup-relay2"), ("backup-relay2", "backup-relay3")]


@pytest.mark.parametrize(("name", "peer"), ATTACKS)
def test_borg_delete_prune_and_key_change_with_the_relays_credentials_are_refused(name: str, peer: str) -> None:
    client = relay(name)
    before = borg_archives(client, peer)
    stored = tree_digest(relay(peer), f"{STORE}/{name}/borg/data")
    assert len(before) >= 2
    delete = borg(client, peer, f"delete REPO::{before[0]}")
    assert delete.rc != 0 and "delete" in delete.stderr, delete.stderr
    prune = borg(client, peer, "prune --keep-last 1 REPO")
    assert prune.rc != 0 and "delete" in prune.stderr, prune.stderr
    rekey = borg(client, peer, "key change-passphrase REPO")
    assert rekey.rc != 0 and "only the operator" in rekey.stderr, rekey.stderr
    assert borg_archives(client, peer) == before
    after = tree_digest(relay(peer), f"{STORE}/{name}/borg/data")
    assert {path: after.get(path) for path in stored} == stored, "a stored segment changed"


# Through the forced command with borg's own client library: overwrite an object in place.
RAW_PUT = r"""
import json, os, sys
from borg.archiver import Archiver
from borg.helpers import Location
from borg.logger import setup_logging
from borg.remote import RemoteRepository
setup_logging()
os.environ["BORG_RSH"] = sys.argv[2]
args = Archiver().get_args(["borg", "list", sys.argv[1]], None)
with RemoteRepository(Location(sys.argv[1]), exclusive=True, args=args) as repo:
    victim = next(i for i in repo.list(limit=1000) if bytes(i) != bytes(32))
    try:
        repo.put(victim, b"overwritten by a compromised relay")
        repo.commit(compact=False)
        print("accepted")
    except Exception as error:
        print("refused", error)
"""


@pytest.mark.parametrize(("name", "peer"), ATTACKS)
def test_raw_borg_overwrite_through_the_forced_command_is_refused(name: str, peer: str) -> None:
    client = relay(name)
    repo = repository(client, "borg", peer)
    result = client.run(f"python3 -c {shlex.quote(RAW_PUT)} {repo['url']} {shlex.quote(repo['ssh_command'])}")
    assert result.stdout.startswith("refused") and "overwriting an existing object is refused" in result.stdout, (
        result.stdout + result.stderr
    )
    assert borg(client, peer, "check REPO").rc == 0


# The refusal is rclone's (1.60 on both releases); restic retries each refused removal for a while.
@pytest.mark.parametrize(("name", "peer"), ATTACKS[:1])
def test_restic_forget_prune_with_the_relays_credentials_is_refused(name: str, peer: str) -> None:
    client = relay(name)
    before = restic_snapshots(client, peer)
    stored = tree_digest(relay(peer), f"{STORE}/{name}/restic/data")
    assert len(before) >= 2
    # restic reports each refused removal (403) and carries on; what counts is what is left.
    forget = restic(client, peer, "forget --keep-last 1 --prune")
    assert "403" in forget.stderr, forget.stdout + forget.stderr
    assert restic_snapshots(client, peer) == before
    assert tree_digest(relay(peer), f"{STORE}/{name}/restic/data") == stored
    assert restic(client, peer, "check").rc == 0


@pytest.mark.parametrize(("name", "peer"), ATTACKS)
def test_raw_http_delete_and_overwrite_through_the_restic_forced_command_are_refused(name: str, peer: str) -> None:
    client = relay(name)
    program = repository(client, "restic", peer)["options"][1].split("=", 1)[1]
    stored = tree_digest(relay(peer), f"{STORE}/{name}/restic")
    base = "http://127.0.0.1:18080"
    curl = "curl -s --http2-prior-knowledge"
    code = f"{curl} -o /dev/null -w '%{{http_code}}'"
    pick = "python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"name\"])'"
    script = f"""
    socat TCP-LISTEN:18080,bind=127.0.0.1,reuseaddr,fork EXEC:{shlex.quote(program)} & proxy=$!
    sleep 1
    snapshot=$({curl} -H 'Accept: application/vnd.x.restic.rest.v2' {base}/snapshots/ | {pick})
    echo "delete=$({code} -X DELETE {base}/snapshots/$snapshot)"
    echo "overwrite=$({code} -X POST --data-binary garbage {base}/snapshots/$snapshot)"
    echo "config=$({code} -X POST --data-binary garbage {base}/config)"
    kill $proxy
    """
    result = client.run(f"bash -c {shlex.quote(script)}")
    codes = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    assert codes == {"delete": "403", "overwrite": "403", "config": "403"}, result.stdout + result.stderr
    assert tree_digest(relay(peer), f"{STORE}/{name}/restic") == stored


PROBE_FORWARD = """
import socket
s = socket.create_connection(("127.0.0.1", 18022), 3)
s.settimeout(3)
print("banner:", s.recv(20))
"""


@pytest.mark.parametrize(("name", "peer"), ATTACKS[:1])
def test_the_forced_command_ignores_the_requested_command_and_gives_no_pty(name: str, peer: str) -> None:
    client = relay(name)
    stored = tree_digest(relay(peer), f"{STORE}/{name}")
    target = f"ringmesh-backup@{address(peer)}"
    for key in ("borg", "restic"):
        ssh = f"{SSH} -i /etc/ringmesh-backup/ssh/{key}_ed25519"
        client.run(f"timeout 20 {ssh} {target} 'rm -rf {STORE}/{name}' </dev/null")
        tty = client.run(f"timeout 20 {ssh} -tt {target} tty </dev/null")
        assert "PTY allocation request failed" in tty.stderr or "not a tty" in tty.stdout + tty.stderr, tty.stderr
        # Ask for a local forward, then use it: the peer must refuse the channel.
        forward = client.run(
            f"timeout 15 {ssh} -N -L 127.0.0.1:18022:127.0.0.1:22 {target} & sleep 2;"
            f" python3 -c {shlex.quote(PROBE_FORWARD)}; kill %1"
        )
        assert "banner: b''" in forward.stdout and "prohibited" in forward.stderr, forward.stdout + forward.stderr
    assert tree_digest(relay(peer), f"{STORE}/{name}") == stored


def test_a_fleet_member_may_log_in_as_the_backup_account_only() -> None:
    client, peer = relay("backup-relay1"), relay("backup-relay2")
    key = client.check_output("cat /etc/ringmesh-backup/ssh/borg_ed25519.pub")
    # Give root on the peer a key the client holds: sshd must still refuse root from a fleet member.
    peer.check_output(f"install -d -m 0700 /root/.ssh && echo {shlex.quote(key)} >> /root/.ssh/authorized_keys")
    try:
        login = client.run(f"{SSH} -i /etc/ringmesh-backup/ssh/borg_ed25519 root@{address('backup-relay2')} true")
        assert login.rc == 255 and "Permission denied" in login.stderr, login.stderr
        journal = peer.check_output("journalctl -u ssh --no-pager -n 50")
        assert "DenyUsers" in journal, journal[-2000:]
    finally:
        peer.run("sed -i '/ringmesh-backup-borg@/d' /root/.ssh/authorized_keys")


def test_checks_verify_data_and_report_success() -> None:
    host = relay("backup-relay3")  # borg 1.4 and restic 0.18 against 1.2/0.14 and 1.4/0.18 peers
    for unit in ("ringmesh-check-borg", "ringmesh-check-restic"):
        result = host.run(f"systemctl start {unit}.service")
        assert result.rc == 0, host.run(f"journalctl -u {unit} -n 20 --no-pager").stdout
    journal = host.check_output("journalctl -u ringmesh-check-borg -u ringmesh-check-restic --no-pager -o cat")
    assert journal.count(": ok in") >= 4, journal
    metrics = host.check_output("curl -sf http://127.0.0.1:9100/metrics")
    assert metrics.count("ringmesh_backup_check_success{") == 4
    assert " 0\n" not in "".join(
        line + "\n" for line in metrics.splitlines() if line.startswith("ringmesh_backup_check_success{")
    )


def test_a_failed_backup_fails_its_unit_and_says_why() -> None:
    client, peer = relay("backup-relay1"), relay("backup-relay3")
    peer.check_output("systemctl stop ssh.socket ssh.service 2>/dev/null; systemctl stop ssh")
    try:
        result = client.run("systemctl start ringmesh-backup-borg.service")
        assert result.rc != 0
        assert client.check_output("systemctl show -P Result ringmesh-backup-borg.service") == "exit-code"
        journal = client.check_output("journalctl -u ringmesh-backup-borg --no-pager -o cat -n 30")
        assert "backup borg@backup-relay3: FAILED" in journal, journal
        assert "Connection refused" in journal or "Connection closed" in journal, journal
        assert "backup borg@backup-relay2: ok" in journal, "the other peer must still get its archive"
        metrics = client.check_output("curl -sf http://127.0.0.1:9100/metrics")
        assert 'ringmesh_backup_last_run_success{repository="backup-relay3",tool="borg"} 0' in metrics
    finally:
        peer.check_output("systemctl start ssh")
    client.check_output("systemctl start ringmesh-backup-borg.service")


# One case here (each is a converge of the three hosts); tests/test_role_checks.py has one per variable.
def test_a_bad_variable_stops_the_role_naming_it() -> None:
    before = relay("backup-relay1").check_output(f"sha256sum {CONFIG}")
    assert_rejected({"backup_sources": ["/etc/ringmesh", "/var/log"]}, "backup_sources: '/var/log'")
    assert relay("backup-relay1").check_output(f"sha256sum {CONFIG}") == before


def run_prune(**extra_vars: Any) -> PlaybookRun:
    """playbooks/prune.yml from this machine, the operator's, with the operator's key."""
    key = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "operator_ed25519")
    return run_playbook(
        REPO / "playbooks" / "prune.yml",
        os.environ["MOLECULE_INVENTORY_FILE"],
        extra_vars={"backup_operator_key_file": key, "prune_clients": "backup-relay2", **extra_vars},
        timeout=600,
    )


def test_prune_shows_the_record_then_prunes_with_the_operators_key_only() -> None:
    """Runs last: it deletes the older archives the tests above needed."""
    client = relay("backup-relay2")
    peer = "backup-relay3"
    borg_before, restic_before = borg_archives(client, peer), restic_snapshots(client, peer)
    assert len(borg_before) >= 2 and len(restic_before) >= 2
    dry = run_prune()
    assert dry.ok, dry.explain()
    shown = json.dumps([r.result for r in dry.results()])  # the record is a looped debug: in its items
    assert "transactions since the last prune" in shown and "transaction " in shown, shown[-5000:]
    assert borg_archives(client, peer) == borg_before and restic_snapshots(client, peer) == restic_before
    # Keep only the newest archive (borg counts each archive for one rule only: keep no others).
    keep_one = {"backup_keep_hourly": 1, "backup_keep_daily": 0, "backup_keep_weekly": 0, "backup_keep_monthly": 0}
    wet = run_prune(backup_prune_confirm=True, **keep_one)
    assert wet.ok, wet.explain()
    assert borg_archives(client, peer) == borg_before[-1:]
    assert len(restic_snapshots(client, peer)) == 1 and restic_snapshots(client, peer)[0] in restic_before
    assert borg(client, peer, "check REPO").rc == 0
    assert restic(client, peer, "check").rc == 0
    # The relay's own key still cannot delete what is left.
    assert borg(client, peer, f"delete REPO::{borg_before[-1]}").rc != 0


def test_restore_falls_back_past_a_damaged_newest_archive() -> None:
    """Runs after the prune: a changed config, one more borg backup, then its newest archive is
    damaged on the peer; the restore must skip it, say so, and bring back the changed config."""
    client = relay("backup-relay1")
    client.check_output("echo '# restore test' >> /etc/ringmesh/node.toml")
    client.check_output("systemctl start ringmesh-backup-borg.service")
    newest = json.loads(client.check_output("ringmesh-backup archives"))["archives"][0]
    damage_newest(relay(newest["repository"].split("@", 1)[1]), "backup-relay1", newest)
    result = client.run("ringmesh-backup restore --destination /root/restore-test")
    assert result.rc == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["repository"], report["archive"]) != (newest["repository"], newest["name"])
    skipped = [s for s in report["skipped"] if s["repository"] == newest["repository"]]
    assert skipped and skipped[0]["archive"] in (newest["name"], ""), report["skipped"]
    restored = client.check_output(f"sha256sum < {report['destination']}/etc/ringmesh/node.toml")
    assert restored == client.check_output("sha256sum < /etc/ringmesh/node.toml")
