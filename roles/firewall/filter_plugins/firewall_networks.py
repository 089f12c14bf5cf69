"""Network checks for the firewall role, with the standard library only (no netaddr)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any


def firewall_invalid_networks(values: list[Any]) -> list[str]:
    """Return the entries that are not an IPv4/IPv6 address or network with a clean host part."""
    invalid = []
    for value in values:
        try:
            ipaddress.ip_network(str(value), strict=True)
        except ValueError:
            invalid.append(str(value))
    return invalid


def firewall_ipv4_networks(values: list[Any]) -> list[str]:
    """The IPv4 entries, normalised (10.0.0.1 -> 10.0.0.1/32)."""
    return [str(n) for n in map(ipaddress.ip_network, map(str, values)) if n.version == 4]


def firewall_ipv6_networks(values: list[Any]) -> list[str]:
    """The IPv6 entries, normalised."""
    return [str(n) for n in map(ipaddress.ip_network, map(str, values)) if n.version == 6]


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self) -> dict[str, Callable[[list[Any]], list[str]]]:
        return {
            "firewall_invalid_networks": firewall_invalid_networks,
            "firewall_ipv4_networks": firewall_ipv4_networks,
            "firewall_ipv6_networks": firewall_ipv6_networks,
        }
