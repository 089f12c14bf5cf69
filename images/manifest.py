"""What is inside an image: Debian and Python packages, as a manifest and a CycloneDX SBOM."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

# The node's virtualenv in the image (roles/node: node_venv).
NODE_SITE_PACKAGES = "opt/ringmesh/venv/lib"


@dataclass(frozen=True, order=True)
class Package:
    kind: str  # "deb" or "pypi"
    name: str
    version: str
    arch: str = ""

    @property
    def purl(self) -> PackageURL:
        if self.kind == "deb":
            return PackageURL(
                type="deb", namespace="debian", name=self.name, version=self.version, qualifiers={"arch": self.arch}
            )
        return PackageURL(type="pypi", name=self.name.lower().replace("_", "-"), version=self.version)


def debian_packages(rootfs: Path) -> list[Package]:
    """Installed packages from dpkg's status file (stanzas of `Field: value` lines)."""
    packages = []
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status") == "install ok installed":
            packages.append(Package("deb", fields["Package"], fields["Version"], fields["Architecture"]))
    return packages


def python_packages(rootfs: Path) -> list[Package]:
    """Distributions in the node's virtualenv (pip's own included: it ships in the image)."""
    site_dirs = [str(p) for p in (rootfs / NODE_SITE_PACKAGES).glob("python3*/site-packages")]
    return [
        Package("pypi", dist.metadata["Name"], dist.version)
        for dist in importlib.metadata.distributions(path=site_dirs)
    ]


def installed_packages(rootfs: Path) -> list[Package]:
    packages = sorted(set(debian_packages(rootfs) + python_packages(rootfs)))
    if not any(p.kind == "deb" for p in packages):
        raise ValueError(f"no Debian packages found in {rootfs}/var/lib/dpkg/status")
    return packages


def write_manifest(packages: list[Package], path: Path) -> None:
    """One package per line, sorted: same inputs on the same day give the same file."""
    path.write_text("".join(f"{p.kind}\t{p.name}\t{p.version}\t{p.arch}\n".replace("\t\n", "\n") for p in packages))


def write_sbom(packages: list[Package], suite: str, path: Path) -> None:
    bom = Bom()
    # Every reference is named (the library would make a random one): two builds of the same
    # packages differ only in the BOM's serial number and timestamp, which the spec wants unique.
    bom.metadata.component = Component(
        name=f"ringmesh-{suite}",
        type=ComponentType.OPERATING_SYSTEM,
        description="Ringmesh relay appliance image",
        bom_ref=f"ringmesh-{suite}",
    )
    components = [
        Component(
            name=package.name,
            version=package.version,
            type=ComponentType.LIBRARY,
            purl=package.purl,
            bom_ref=package.purl.to_string(),
        )
        for package in packages
    ]
    bom.components.update(components)
    # The image holds every package (installed, not necessarily depended on by each other).
    bom.register_dependency(bom.metadata.component, components)
    path.write_text(JsonV1Dot6(bom).output_as_string(indent=1) + "\n")
