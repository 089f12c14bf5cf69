"""Ringmesh relay node and mesh client."""

__version__ = "0.1.0"
