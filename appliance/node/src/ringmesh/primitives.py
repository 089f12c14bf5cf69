"""ChaCha20 and X25519 entry points for the hot path, shared by the onion and LIONESS code.

pyca/cryptography's public API checks its arguments in Python, which costs ~40% of a small
ChaCha20 call. When the pinned library exposes its backend entry points and they give the
same results as the public API (checked at import), those are used; otherwise the public API.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_ZERO_NONCE = bytes(16)


def public_keystream_xor(key: bytes, data: bytes) -> bytes:
    """data XOR the ChaCha20 keystream of key (nonce and counter zero)."""
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor().update(data)


def public_x25519(raw: bytes) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(raw)


keystream_xor: Callable[[bytes, bytes], bytes] = public_keystream_xor
x25519_public: Callable[[bytes], X25519PublicKey] = public_x25519
try:
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

    _create_ctx = _rust_openssl.ciphers.create_encryption_ctx

    def _fast_keystream_xor(key: bytes, data: bytes) -> bytes:
        return bytes(_create_ctx(algorithms.ChaCha20(key, _ZERO_NONCE), None).update(data))

    if _fast_keystream_xor(bytes(32), bytes(8)) == public_keystream_xor(bytes(32), bytes(8)):
        keystream_xor = _fast_keystream_xor
        x25519_public = _rust_openssl.x25519.from_public_bytes
except (ImportError, AttributeError, TypeError):  # pragma: no cover - other library layouts
    pass
