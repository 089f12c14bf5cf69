"""A bootable GPT disk in a plain file, without loop devices or mounts.

sfdisk writes the partition table, mkfs.ext4 fills the root partition from a directory
(`-d`, at an offset into the file), and GRUB's boot code goes in with plain writes: boot.img
into the MBR and core.img into the BIOS boot partition, patched the way grub-install's setup
would patch them (grub-core/boot/i386/pc/boot.S, diskboot.S; util/setup.c).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MIB = 2**20
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# Where the bootloader files are in the rootfs (made by playbooks/image.yml).
GRUB_DIR = "boot/grub/i386-pc"

# boot.img: the LBA of core.img's first sector, and the jump that trusts the BIOS's boot drive
# number (grub-install replaces it with two NOPs on hard disks, for BIOSes that pass 0 or 1).
BOOT_KERNEL_SECTOR = 0x5C
BOOT_DRIVE_CHECK = 0x66
# The MBR code area ends where the disk signature and the partition table begin.
MBR_CODE_END = 0x1B8
# diskboot.img (core.img's first sector) ends in a block list {u64 start, u16 len, u16 segment}
# naming the sectors of the rest of core.img.
BLOCKLIST = struct.Struct("<QHH")
BLOCKLIST_OFFSET = SECTOR - BLOCKLIST.size


class DiskError(Exception):
    """The disk cannot be made as asked."""


@dataclass(frozen=True)
class DiskLayout:
    """Partition 1: BIOS boot (core.img), 1 MiB at 1 MiB. Partition 2: the ext4 root, to the end."""

    size: int
    bios_boot_start: int = 1 * MIB
    bios_boot_size: int = 1 * MIB

    @property
    def root_offset(self) -> int:
        return self.bios_boot_start + self.bios_boot_size

    @property
    def root_size(self) -> int:
        # The backup GPT takes the last 33 sectors; keep the root MiB-aligned before them.
        usable = self.size - self.root_offset - 33 * SECTOR
        return usable // MIB * MIB

    def sfdisk_script(self) -> str:
        return (
            "label: gpt\n"
            f"first-lba: {self.bios_boot_start // SECTOR}\n"
            f"start={self.bios_boot_start // SECTOR}, size={self.bios_boot_size // SECTOR}, "
            f'type={BIOS_BOOT_TYPE}, name="bios-boot"\n'
            f"start={self.root_offset // SECTOR}, size={self.root_size // SECTOR}, "
            f'type={LINUX_FS_TYPE}, name="ringmesh-root"\n'
        )


Runner = Callable[..., str]


def write_partition_table(raw: Path, layout: DiskLayout, run: Runner) -> None:
    if layout.root_size < 512 * MIB:
        raise DiskError(f"disk size {layout.size} leaves under 512 MiB for the root filesystem")
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)], input_text=layout.sfdisk_script())


def patched_boot_code(boot_img: bytes, core_img: bytes, layout: DiskLayout) -> tuple[bytes, bytes]:
    """boot.img pointed at core.img's first sector, core.img's block list at its other sectors."""
    if len(boot_img) != SECTOR:
        raise DiskError(f"boot.img is {len(boot_img)} bytes, not {SECTOR}")
    if len(core_img) > layout.bios_boot_size:
        raise DiskError(f"core.img ({len(core_img)} bytes) does not fit the BIOS boot partition")
    core_sector = layout.bios_boot_start // SECTOR
    core_sectors = -(-len(core_img) // SECTOR)
    boot = bytearray(boot_img)
    struct.pack_into("<Q", boot, BOOT_KERNEL_SECTOR, core_sector)
    boot[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    core = bytearray(core_img.ljust(core_sectors * SECTOR, b"\0"))
    _, _, segment = BLOCKLIST.unpack_from(core, BLOCKLIST_OFFSET)
    BLOCKLIST.pack_into(core, BLOCKLIST_OFFSET, core_sector + 1, core_sectors - 1, segment)
    return bytes(boot[:MBR_CODE_END]), bytes(core)


def install_bootloader(raw: Path, layout: DiskLayout, rootfs: Path) -> None:
    grub = rootfs / GRUB_DIR
    boot, core = patched_boot_code((grub / "boot.img").read_bytes(), (grub / "core.img").read_bytes(), layout)
    with raw.open("r+b") as disk:
        disk.seek(0)
        disk.write(boot)
        disk.seek(layout.bios_boot_start)
        disk.write(core)
