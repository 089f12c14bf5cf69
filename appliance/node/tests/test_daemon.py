"""One real relay process: automatic rotation at epoch expiry, destruction after the grace."""

from __future__ import annotations

import time
from pathlib import Path

from fleet import Fleet, ringmesh


def test_epoch_expiry_rotates_and_grace_destroys(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.create(1, 0)
    relay = fleet.relays[0]
    fleet.write_relay_config(relay, fleet.relays, epoch_seconds=8, grace_seconds=1)
    # epoch 1 was made with the default length; a rotation makes an 8-second epoch 2
    assert ringmesh("keys", "rotate", config=relay.config).returncode == 0
    fleet.start(relay)
    try:
        deadline = time.monotonic() + 40
        status = None
        while time.monotonic() < deadline:
            status = fleet.status(relay)
            if (
                status is not None
                and int(str(status["epoch"])) >= 3
                and status["epochs_held"] == [status["epoch"]]
            ):
                break
            time.sleep(0.5)
        assert status is not None and int(str(status["epoch"])) >= 3, status
        assert status["epochs_held"] == [status["epoch"]], status
        files = sorted(p.name for p in (relay.state_dir / "keys").glob("epoch-*.json"))
        assert files == [f"epoch-{int(str(status['epoch'])):08d}.json"]
    finally:
        fleet.stop_all()
    assert "stopping" in fleet.log(relay)
