"""Retired private keys leave no copy on disk: the state directory lives on a real ext4 image
(mkfs.ext4, mounted through a loop device), a relay runs and rotates on it, and afterwards
every block of the image is searched for the retired keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet import RINGMESH, free_udp_port, ringmesh
from ringmesh.prekeys import PrekeyStore

IMAGE_MB = 32
ROTATIONS = 5


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image file, mount point). Unmounted by the test itself before it scans the image."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 to mount a loop-backed ext4 image")
    image, mount = tmp_path / "state.img", tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(IMAGE_MB << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a loop device on this machine")
    try:
        yield image, mount
    finally:
        if os.path.ismount(mount):
            subprocess.run(["umount", str(mount)], check=False)


def epoch_secrets(keys_dir: Path) -> dict[int, list[str]]:
    """Each epoch's private keys as they are stored (hex in the epoch file)."""
    out = {}
    for path in keys_dir.glob("epoch-*.json"):
        record = json.loads(path.read_text())
        out[int(record["epoch"])] = [record["link_seed"], record["onion_key"]]
    return out


def found_in_image(image: Path, secrets: list[str]) -> set[str]:
    """Which secrets occur anywhere in the image, as stored (hex) or as raw bytes."""
    needles = {s: (s.encode(), bytes.fromhex(s)) for s in secrets}
    data = image.read_bytes()
    return {s for s, forms in needles.items() if any(form in data for form in forms)}


def deleted_open_files(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return [t for t in targets if t.endswith("(deleted)")]


def test_rotation_leaves_no_retired_key_in_any_block(ext4_mount: tuple[Path, Path]) -> None:
    image, mount = ext4_mount

    # Control: the file-replacing write that the keystore used to do. Its old version must be
    # found, or this scan could not see what it is looking for.
    control = mount / "control"
    control.mkdir()
    leaked = os.urandom(32).hex()
    (control / "epoch.json").write_text(json.dumps({"onion_key": leaked}))
    os.sync()
    (control / "epoch.json.tmp").write_text(json.dumps({"onion_key": "retired"}))
    os.replace(control / "epoch.json.tmp", control / "epoch.json")
    (control / "epoch.json").unlink()

    state = mount / "state"
    state.mkdir(mode=0o700)
    config = mount / "node.toml"
    config.write_text(
        f'[node]\nrole = "relay"\nstate_dir = "{state}"\nlisten = "127.0.0.1:{free_udp_port()}"\n'
        '[keys]\nepoch_seconds = 3600\ngrace_seconds = 0\n[metrics]\nlisten = ""\n'
        "[replay]\npackets_per_second = 10\n"
    )
    assert ringmesh("keys", "init", config=config).returncode == 0
    keys_dir = state / "keys"
    daemon = subprocess.Popen(
        [*RINGMESH, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    retired: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while ringmesh("status", "--json", config=config).returncode != 0:
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.2)
        for _ in range(ROTATIONS):
            before = epoch_secrets(keys_dir)
            out = ringmesh("keys", "rotate", "--json", config=config)
            assert json.loads(out.stdout)["reloaded"] is True, out.stderr
            after = epoch_secrets(keys_dir)
            assert len(after) == 1 and set(after) != set(before)  # grace 0: destroyed at once
            retired += [s for epoch, secrets in before.items() for s in secrets]
        assert deleted_open_files(daemon.pid) == []
    finally:
        daemon.terminate()
        daemon.wait(10)
    current = [s for secrets in epoch_secrets(keys_dir).values() for s in secrets]
    assert len(retired) == 2 * ROTATIONS

    subprocess.run(["umount", str(mount)], check=True)
    found = found_in_image(image, [*retired, *current, leaked])
    assert leaked in found, "the scan does not see a key left behind by rename-over"
    assert set(current) <= found, "the scan does not see the live keys"
    leftover = found & set(retired)
    assert len(leftover) == 0, f"{len(leftover)} of {len(retired)} retired keys still on disk"


def test_destroyed_prekeys_leave_no_copy_in_any_block(ext4_mount: tuple[Path, Path]) -> None:
    """The end-to-end prekeys go the same way: rotated, kept for their grace, then no block
    of the file system holds their private halves."""
    image, mount = ext4_mount
    keys_dir = mount / "keys"
    keys_dir.mkdir(mode=0o700)
    store = PrekeyStore(keys_dir, Ed25519PrivateKey.generate(), lifetime=100, grace=10)
    now = 1_900_000_000
    destroyed: list[str] = []
    for step in range(ROTATIONS):
        start = now + step * 100
        store.maintain(start)  # a new prekey; the previous one enters its 10 s grace
        held = {p.prekey_id: p for p in store.held()}
        assert len(held) == (2 if step else 1)
        store.maintain(start + 11)  # the grace is over
        gone = set(held) - {p.prekey_id for p in store.held()}
        assert len(gone) == (1 if step else 0)
        destroyed += [
            h for i in gone for h in (held[i].mlkem_seed.hex(), held[i].x25519_private.hex())
        ]
    current = [h for p in store.held() for h in (p.mlkem_seed.hex(), p.x25519_private.hex())]
    assert len(destroyed) == 2 * (ROTATIONS - 1)

    subprocess.run(["umount", str(mount)], check=True)
    found = found_in_image(image, [*destroyed, *current])
    assert set(current) <= found, "the scan does not see the live prekey"
    leftover = found & set(destroyed)
    assert not leftover, f"{len(leftover)} of {len(destroyed)} destroyed prekey halves on disk"
