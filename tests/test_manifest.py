"""The package manifest and SBOM of images/build, from a small dpkg status file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "images"))

from manifest import installed_packages, write_manifest, write_sbom

DPKG_STATUS = """\
Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.3.dfsg+really1.3.1-1+b1

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: base-files
Status: install ok installed
Architecture: amd64
Version: 13.8
Description: Debian base system miscellaneous files
 A continuation line: not a field.
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    status = tmp_path / "rootfs/var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(DPKG_STATUS)
    return tmp_path / "rootfs"


def test_manifest_lists_installed_packages_sorted(rootfs: Path, tmp_path: Path) -> None:
    write_manifest(installed_packages(rootfs), tmp_path / "packages.txt")
    assert (tmp_path / "packages.txt").read_text() == (
        "deb\tbase-files\t13.8\tamd64\ndeb\tzlib1g\t1:1.3.dfsg+really1.3.1-1+b1\tamd64\n"
    )


def test_rootfs_without_debian_packages_is_refused(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text("")
    with pytest.raises(ValueError, match="no Debian packages"):
        installed_packages(tmp_path)


def test_two_sboms_of_the_same_packages_differ_only_in_serial_and_time(rootfs: Path, tmp_path: Path) -> None:
    def sbom(name: str) -> dict[str, object]:
        write_sbom(installed_packages(rootfs), "trixie", tmp_path / name)
        document: dict[str, Any] = json.loads((tmp_path / name).read_text())
        assert document["serialNumber"].startswith("urn:uuid:")
        del document["serialNumber"], document["metadata"]["timestamp"]
        return document

    first, second = sbom("a.cdx.json"), sbom("b.cdx.json")
    assert first == second
    document = json.loads((tmp_path / "a.cdx.json").read_text())
    refs = {c["bom-ref"] for c in document["components"]} | {document["metadata"]["component"]["bom-ref"]}
    image_depends_on = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}["ringmesh-trixie"]
    assert sorted(image_depends_on) == sorted(refs - {"ringmesh-trixie"})
    assert refs == {
        "ringmesh-trixie",
        "pkg:deb/debian/base-files@13.8?arch=amd64",
        "pkg:deb/debian/zlib1g@1:1.3.dfsg%2Breally1.3.1-1%2Bb1?arch=amd64",
    }
