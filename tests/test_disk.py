"""The disk layout and GRUB boot code patching of images/build, on small files with real sfdisk."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "images"))

from disk import (
    BIOS_BOOT_TYPE,
    BLOCKLIST_OFFSET,
    BOOT_DRIVE_CHECK,
    BOOT_KERNEL_SECTOR,
    LINUX_FS_TYPE,
    MBR_CODE_END,
    MIB,
    DiskError,
    DiskLayout,
    patched_boot_code,
    write_partition_table,
)


def run(cmd: list[str], *, input_text: str | None = None) -> str:
    return subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=True).stdout


def test_partition_table_is_gpt_with_bios_boot_then_root_to_the_end(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    layout = DiskLayout(size=1024 * MIB)
    raw.write_bytes(b"")
    run(["truncate", "--size", str(layout.size), str(raw)])
    write_partition_table(raw, layout, run)
    table = json.loads(run(["sfdisk", "--json", str(raw)]))["partitiontable"]
    bios, root = table["partitions"]
    assert table["label"] == "gpt"
    assert (bios["start"], bios["size"], bios["type"]) == (2048, 2048, BIOS_BOOT_TYPE)
    assert (root["start"] * 512, root["type"]) == (layout.root_offset, LINUX_FS_TYPE)
    assert root["size"] * 512 == layout.root_size
    # the root ends before the backup GPT (last 33 sectors) and on a MiB boundary
    assert layout.root_offset + layout.root_size <= layout.size - 33 * 512
    assert layout.root_size % MIB == 0


def test_a_disk_too_small_for_a_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="under 512 MiB"):
        write_partition_table(tmp_path / "small.raw", DiskLayout(size=256 * MIB), run)


def test_boot_code_points_at_core_image_in_the_bios_boot_partition() -> None:
    layout = DiskLayout(size=1024 * MIB)
    boot_img = bytes(range(256)) * 2
    core_img = bytearray(3 * 512 + 100)  # 4 sectors once padded
    struct.pack_into("<QHH", core_img, BLOCKLIST_OFFSET, 2, 99, 0x820)  # grub-mkimage's defaults
    boot, core = patched_boot_code(boot_img, bytes(core_img), layout)
    assert len(boot) == MBR_CODE_END, "the partition table area of the MBR must stay untouched"
    assert struct.unpack_from("<Q", boot, BOOT_KERNEL_SECTOR)[0] == 2048
    assert boot[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] == b"\x90\x90"
    assert len(core) == 4 * 512
    assert struct.unpack_from("<QHH", core, BLOCKLIST_OFFSET) == (2049, 3, 0x820)


def test_a_core_image_larger_than_its_partition_is_refused() -> None:
    with pytest.raises(DiskError, match="does not fit"):
        patched_boot_code(bytes(512), bytes(2 * MIB), DiskLayout(size=1024 * MIB))


def test_the_config_embedded_in_core_image_is_commands_only() -> None:
    # GRUB runs it with the rescue parser: no comments, and a stray quote swallows the lines after it.
    template = Path(__file__).resolve().parent.parent / "playbooks/templates/grub-early.cfg.j2"
    uuid = "0b3c6a52-8d6e-4a8e-9d0e-2f6f1c1d5e7a"
    rendered = jinja2.Template(template.read_text()).render(image_root_uuid=uuid)
    assert rendered.splitlines() == [
        f"search.fs_uuid {uuid} root hd0,gpt2",
        "set prefix=($root)'/boot/grub'",
    ]
