from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringmesh.cli import build_parser
from ringmesh.config import (
    Config,
    ConfigError,
    RelayEntry,
    load_config,
    parse_config,
    render_config,
)
from ringmesh.did import did_from_seed
from ringmesh.keystore import Keystore, KeystoreError
from ringmesh.replay import filter_dimensions
from ringmesh.wire import ROLE_CLIENT, ROLE_RELAY

DID_A = did_from_seed(bytes(32))
DID_B = did_from_seed(bytes([1]) * 32)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


GOOD = f"""
[node]
role = "relay"
name = "r1"
state_dir = "/tmp/x"
listen = "127.0.0.1:7733"
[mixing]
mean_delay_ms = 20
[[relays]]
did = "{DID_A}"
address = "10.0.0.1:7733"
"""


def test_render_config_round_trips_through_parse_config(tmp_path: Path) -> None:
    relays = (
        RelayEntry.from_did(DID_A, ("10.0.0.1", 7733)),
        RelayEntry.from_did(DID_B, ("fd00::2", 7734)),
    )
    for config in (
        Config(tmp_path / "relay.toml", name='r "1"', relays=relays, metrics_listen=None),
        Config(
            tmp_path / "client.toml",
            role="client",
            state_dir=tmp_path / "state",
            listen=("::1", 7000),
            client_home=DID_B,
            mean_delay_ms=5,
            loop_rate=0.5,
            path_length=4,
            send_rate=12.5,
            client_loop_rate=0.0,
            relays=relays,
        ),
    ):
        config.path.write_text(render_config(config))
        assert load_config(config.path) == config


def test_good_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.relays[0].did == DID_A
    assert cfg.mean_delay_ms == 20
    assert cfg.metrics_listen == ("127.0.0.1", 9733)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[mixing]\nmean_delay_ms = -1\n", "mixing.mean_delay_ms"),
        ("[mixing]\nmean_delay_ms = 'x'\n", "mixing.mean_delay_ms"),
        ("[mixing]\nloop_rate = -0.5\n", "mixing.loop_rate"),
        ("[mixing]\nmean_delay_ms = 60001\n", "mixing.mean_delay_ms"),
        ("[mixing]\nmax_held_packets = 0\n", "mixing.max_held_packets"),
        ("[mailbox]\nmax_mailboxes = 0\n", "mailbox.max_mailboxes"),
        ("[mailbox]\nmax_bytes = 1024\n", "mailbox.max_bytes"),
        ("[client]\npath_length = 2\n", "client.path_length"),
        ("[client]\npath_length = 6\n", "client.path_length"),
        ("[client]\nsend_rate = 0\n", "client.send_rate"),
        ("[client]\nloop_rate = -1\n", "client.loop_rate"),
        ("[node]\nrole = 'mixer'\n", "node.role"),
        ("[node]\nlisten = 'nonsense'\n", "node.listen"),
        ("[node]\nstate_dir = 'relative'\n", "node.state_dir"),
        ("[node]\nbogus = 1\n", "node.bogus"),
        ("[wat]\n", "wat"),
        ("[keys]\nepoch_seconds = 0\n", "keys.epoch_seconds"),
        ("[metrics]\nlisten = '1.2.3.4'\n", "metrics.listen"),
        ("[[relays]]\ndid = 'did:key:zBAD'\naddress = '1.2.3.4:1'\n", "relays[0].did"),
        (f"[[relays]]\ndid = '{DID_A}'\n", "relays[0].address"),
        ("[node]\nrole = 'client'\n", "client.home"),
        (
            f"[client]\nhome = '{DID_B}'\n[[relays]]\ndid = '{DID_A}'\naddress = '1.2.3.4:5'\n",
            "client.home",
        ),
        ("not toml = = =", "config"),
        ("[replay]\npackets_per_second = 0\n", "replay.packets_per_second"),
        ("[replay]\npackets_per_second = 100000\n", "replay.packets_per_second"),  # 2.3 GiB
        ("[replay]\nfalse_positive_rate = 0.0\n", "replay.false_positive_rate"),
        ("[replay]\nfalse_positive_rate = 0.7\n", "replay.false_positive_rate"),
        ("[replay]\nsave_seconds = 0\n", "replay.save_seconds"),
        ("[replay]\nbudget = 1\n", "replay.budget"),
        ("[link]\nmax_sessions = 0\n", "link.max_sessions"),
        ("[link]\nmax_half_open_per_source = -1\n", "link.max_half_open_per_source"),
        (
            "[link]\nmax_sessions = 10\nreserved_relay_sessions = 10\n",
            "link.reserved_relay_sessions",
        ),
        ("[link]\nmax_peers = 3\n", "link.max_peers"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(f"config error: {field}:")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringmesh.cli", *args], capture_output=True, text=True, check=False
    )


def test_cli_config_error_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[mixing]\nmean_delay_ms = -3\n")
    out = run_cli("status", "--config", str(path))
    assert out.returncode == 2
    assert "config error: mixing.mean_delay_ms: must be a non-negative integer" in out.stderr


def keystore(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "state", ROLE_RELAY, epoch_seconds=100, grace_seconds=50)


def test_init_is_idempotent_with_strict_modes(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    assert ks.init(now=1000) == "created"
    assert ks.init(now=1000) == "exists"
    assert stat.S_IMODE(ks.dir.stat().st_mode) == 0o700
    for path in ks.dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = ks.load(now=1000)
    assert keys.current.epoch == 1
    assert keys.current.descriptor.expires == 1000 + 100 + 50


def test_rotate_keeps_previous_for_grace_then_destroys(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    ks.init(now=1000)
    old_onion = ks.load(now=1000).current.onion_key.private_bytes_raw()
    keys = ks.rotate(now=1010)
    assert [e.epoch for e in keys.epochs] == [2, 1]
    assert ks.prune(now=1059) == []
    assert ks.prune(now=1060) == [1]
    keys = ks.load(now=1060)
    assert [e.epoch for e in keys.epochs] == [2]
    assert all(old_onion.hex() not in p.read_text() for p in ks.dir.glob("epoch-*.json"))


def test_key_files_are_never_replaced_and_leftovers_are_destroyed(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    ks.init(now=1000)
    epoch_file = ks.dir / "epoch-00000001.json"
    inode = epoch_file.stat().st_ino
    ks.rotate(now=1010)  # retirement is recorded beside the key file, not by rewriting it
    assert epoch_file.stat().st_ino == inode
    assert (ks.dir / "epoch-00000001.retired").read_text() == "1010"
    with pytest.raises(KeystoreError, match="refusing to replace"):
        ks._new_epoch(2, 1020)
    # an interrupted write and the companion of a destroyed epoch
    for name in ("epoch-00000003.json.tmp", "epoch-00000000.retired"):
        os.close(os.open(ks.dir / name, os.O_WRONLY | os.O_CREAT, 0o600))
    ks.prune(now=1060)
    assert sorted(p.name for p in ks.dir.iterdir()) == [
        ".lock",
        "epoch-00000002.json",
        "identity.key",
    ]


def test_retirement_written_inside_the_epoch_file_is_still_honoured(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    ks.init(now=1000)
    path = ks.dir / "epoch-00000001.json"
    record = json.loads(path.read_text())
    ks.rotate(now=1010)
    (ks.dir / "epoch-00000001.retired").unlink()
    os.chmod(path, 0o600)
    path.write_text(json.dumps({**record, "retired_at": 1005}))
    assert ks.load(now=1010).epochs[1].retired_at == 1005
    assert ks.prune(now=1055) == [1]


def test_replay_filter_is_kept_with_its_epoch_and_destroyed_with_it(tmp_path: Path) -> None:
    ks = keystore(tmp_path)
    ks.init(now=1000)
    epoch1 = ks.load(now=1000).current
    replay = ks.open_replay_filter(epoch1, budget=1000, false_positive_rate=1e-6)
    assert not replay.seen_before(b"t" * 16)
    assert replay.dirty
    assert ks.save_replay_filter(1, replay)
    assert not replay.dirty
    path = ks.dir / "epoch-00000001.replay"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"t" * 16 not in path.read_bytes()  # keyed positions, not the tags
    ks.check_permissions()

    again = ks.open_replay_filter(epoch1, budget=1000, false_positive_rate=1e-6)
    assert again.seen_before(b"t" * 16)
    # a filter under another epoch's name belongs to another key
    ks.rotate(now=1010)
    epoch2 = ks.load(now=1010).current
    os.link(path, ks.dir / "epoch-00000002.replay")
    with pytest.raises(KeystoreError, match=r"epoch-00000002\.replay: unusable replay filter"):
        ks.open_replay_filter(epoch2, budget=1000, false_positive_rate=1e-6)
    (ks.dir / "epoch-00000002.replay").unlink()

    assert ks.prune(now=1060) == [1]
    assert not path.exists()
    assert not ks.save_replay_filter(1, again)  # the epoch is gone: nothing is written back
    assert not path.exists()


def test_default_epoch_and_its_filter() -> None:
    cfg = parse_config({}, Path("node.toml"))
    assert (cfg.epoch_seconds, cfg.grace_seconds) == (3600, 600)
    assert cfg.replay_budget == 2000 * 4200
    bits, _ = filter_dimensions(cfg.replay_budget, cfg.replay_false_positive_rate)
    assert round(bits / 8 / 2**20) == 24  # MiB, as the README ("Key epochs") states


@pytest.mark.parametrize(("target", "mode"), [("dir", 0o755), ("dir", 0o750), ("file", 0o644)])
def test_loose_permissions_refused(tmp_path: Path, target: str, mode: int) -> None:
    ks = keystore(tmp_path)
    ks.init()
    victim = ks.dir if target == "dir" else ks.dir / "identity.key"
    os.chmod(victim, mode)
    with pytest.raises(KeystoreError, match="mode"):
        ks.load()


def test_cli_refuses_loose_keystore(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = write(
        tmp_path, f'[node]\nrole = "relay"\nstate_dir = "{state}"\n[metrics]\nlisten = ""\n'
    )
    assert run_cli("keys", "init", "--config", str(path)).stdout.strip() == "created"
    assert run_cli("keys", "init", "--config", str(path)).stdout.strip() == "exists"
    show = json.loads(run_cli("keys", "show", "--public", "--json", "--config", str(path)).stdout)
    assert set(show) == {
        "did",
        "epoch",
        "epoch_expires",
        "link_key_fingerprint",
        "onion_key_fingerprint",
    }
    os.chmod(state / "keys" / "identity.key", 0o640)
    out = run_cli("run", "--config", str(path))
    assert out.returncode == 2
    assert "identity.key has mode 0640" in out.stderr


@pytest.mark.parametrize("flag", ["--home", "--via"])
def test_send_names_the_recipients_relay_with_home_or_via(flag: str) -> None:
    args = build_parser().parse_args(["send", "--to", "did:key:zUser", flag, "did:key:zRelay"])
    assert args.home == "did:key:zRelay"


def test_a_client_starts_a_new_epoch_when_its_keys_expired(tmp_path: Path) -> None:
    from ringmesh.cli import _client_keys

    state = tmp_path / "state"
    config = parse_config({"node": {"state_dir": str(state)}}, tmp_path / "node.toml")
    store = Keystore(state, ROLE_CLIENT, config.epoch_seconds, config.grace_seconds)
    store.init(now=time.time() - config.epoch_seconds - 1)  # an epoch that has ended
    assert _client_keys(config).current.epoch == 2
    assert _client_keys(config).current.epoch == 2  # a live epoch is kept


@pytest.mark.parametrize(
    ("field", "value"),
    [("expires", 10**80), ("epoch", 0), ("epoch", 1 << 32), ("created", -1)],
)
def test_an_epoch_file_with_an_out_of_range_number_is_named(
    tmp_path: Path, field: str, value: int
) -> None:
    # Found by fuzz/fuzz.py (target keystore): a huge `expires` reached the descriptor's
    # struct.pack and raised struct.error instead of a keystore error naming the file.
    store = Keystore(tmp_path / "state", ROLE_RELAY, 3600, 600)
    store.init()
    (path,) = (tmp_path / "state" / "keys").glob("epoch-*.json")
    record = json.loads(path.read_text())
    record[field] = value
    path.write_text(json.dumps(record))
    with pytest.raises(KeystoreError, match=f"{path.name}.*{field}"):
        store.load()
