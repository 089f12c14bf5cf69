from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ringmesh_ledger import group
from ringmesh_ledger.keys import SigningKey, elgamal_public

# RFC 9496 appendix A.1: encodings of small multiples of the generator.
MULTIPLES = {
    1: "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    2: "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    3: "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
}


@pytest.mark.parametrize("k", sorted(MULTIPLES))
def test_base_point_multiples_match_rfc9496(k: int) -> None:
    assert group.base_mul(k).hex() == MULTIPLES[k]


def test_ed25519_public_key_is_the_elgamal_key_of_its_secret() -> None:
    # RFC 8032 test 1 and random seeds: the converted point is sk*G for the clamped scalar.
    seeds = [bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")]
    seeds += [hashlib.sha256(bytes([i])).digest() for i in range(8)]
    for seed in seeds:
        key = SigningKey(seed)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        assert public == key.public
        assert group.ed25519_public_to_point(public) == group.base_mul(key.elgamal_secret)
        assert elgamal_public(key.did) == group.base_mul(key.elgamal_secret)


def test_bad_encodings_are_refused() -> None:
    with pytest.raises(group.PointError):
        group.check_point(b"\xff" * 32)
    with pytest.raises(group.PointError):
        group.ed25519_public_to_point(b"\xff" * 31 + b"\x7f")  # y >= p
    with pytest.raises(ValueError):
        group.scalar_from_bytes(group.L.to_bytes(32, "little"))


def test_msm_merges_equal_points_and_handles_zero() -> None:
    h, g = group.H, group.G
    assert group.msm([(2, h), (3, h), (0, g)]) == group.mul(5, h)
    assert group.msm([(1, h), (group.L - 1, h)]) == group.IDENTITY
    assert group.commit(0, 0) == group.IDENTITY


def test_the_system_libsodium_is_used_and_nothing_is_written_to_tmpdir(tmp_path: Path) -> None:
    """rbcl on its own writes its bundled libsodium into TMPDIR and loads it from there, which
    a noexec /tmp (hardened hosts) refuses; with the system's library it writes nothing."""
    probe = (
        "import sys; from ringmesh_ledger import group; "
        "assert group.base_mul(2).hex() == sys.argv[1]; "
        "print(sys.modules['_sodium']._sodium._name)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, MULTIPLES[2]],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "libsodium.so" in run.stdout and str(tmp_path) not in run.stdout, run.stdout
    assert list(tmp_path.iterdir()) == []
