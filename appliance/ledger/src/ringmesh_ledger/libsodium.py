"""Debian's libsodium for rbcl, before rbcl is imported.

rbcl looks for a `_sodium` module first; without one it writes the libsodium it bundles to a
new file in TMPDIR at every import and loads it from there. On a hardened host /tmp is
mounted noexec, so that load fails ("failed to map segment from shared object") and the
ledger cannot start; elsewhere it leaves a 2.7 MB file behind per process. Handed the
system's libsodium (Debian's libsodium23, which the ledger role installs and which gets
Debian's security updates) as that `_sodium` module, rbcl writes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import types

# ristretto255 came with libsodium 1.0.18 (bookworm and trixie both ship it).
SONAME = "libsodium.so.23"


def provide() -> str:
    """Make `import _sodium` give rbcl the system libsodium; return its path or soname."""
    existing = sys.modules.get("_sodium")
    if existing is not None and isinstance(getattr(existing, "_sodium", None), ctypes.CDLL):
        return str(existing._sodium._name)
    name = ctypes.util.find_library("sodium") or SONAME
    try:
        library = ctypes.CDLL(name)
    except OSError as error:
        raise ImportError(
            f"ringmesh-ledger needs the system libsodium ({SONAME}, Debian's libsodium23): {error}"
        ) from None
    module = types.ModuleType("_sodium")
    module._sodium = library  # type: ignore[attr-defined]
    sys.modules["_sodium"] = module
    return name
