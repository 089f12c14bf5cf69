"""Coverage-guided fuzzing (atheris) of every parser that sees network or file input.

    python appliance/node/fuzz/fuzz.py TARGET [libFuzzer flags, e.g. -runs=1000000]
    python appliance/node/fuzz/fuzz.py --list

Each target feeds the fuzzer's bytes to one parser and accepts only the parser's documented
error (ValueError subclasses such as DescriptorError, ConfigError, KeystoreError); any other
exception, a hang or a crash is a finding, which atheris reports with the input that caused
it. The corpus starts from real, valid inputs of each kind (`seeds()`), so the mutations
reach past the length and signature checks. `make fuzz` runs every target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from ringmesh import directory, messaging
    from ringmesh.certificate import CertificateError, SigningCertificate
    from ringmesh.client import SurbKeys
    from ringmesh.codec import ChunkAssembler, CodecError, directory_messages
    from ringmesh.config import Config, ConfigError, RelayEntry, parse_config, render_config
    from ringmesh.descriptor import Descriptor, DescriptorError
    from ringmesh.keystore import Keystore, KeystoreError
    from ringmesh.link import LinkEndpoint
    from ringmesh.onion import Hop, OnionError, build_packet, peel
    from ringmesh.prekeys import Prekey, PrekeyBundle, PrekeyError, PrekeyStore, seal
    from ringmesh.primitives import x25519_public
    from ringmesh.replay import OnionReplayFilter, ReplayFilterError, epoch_filter_key
    from ringmesh.wire import CMD_DELIVER, PAYLOAD_LEN, ROLE_CLIENT, ROLE_RELAY

NOW = 1_900_000_000.0


def _state_dir() -> Path:
    """A scratch directory named after this process. libFuzzer ends the process without
    Python's clean-up, so each run removes those of runs that are over."""
    for old in Path(tempfile.gettempdir()).glob("ringmesh-fuzz-*"):
        pid = old.name.removeprefix("ringmesh-fuzz-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    state = Path(tempfile.gettempdir()) / f"ringmesh-fuzz-{os.getpid()}"
    state.mkdir(mode=0o700)
    return state


STATE = _state_dir()
RELAY_STORE = Keystore(STATE / "relay", ROLE_RELAY, 3600, 600)
RELAY_STORE.init(NOW)
RELAY = RELAY_STORE.load(NOW)
CLIENT_STORE = Keystore(STATE / "client", ROLE_CLIENT, 3600, 600)
CLIENT_STORE.init(NOW)
CLIENT = CLIENT_STORE.load(NOW)
RING = frozenset({RELAY.identity_public})
ONION_KEY = RELAY.current.onion_key
FILTER_KEY = epoch_filter_key(ONION_KEY)
ENVELOPE_KEY = CLIENT.current.onion_key
SURB_KEY = bytes(range(32))

# The link layer as a relay (responder) and as a client with a handshake under way
# (initiator), so that answers to a handshake reach the initiator's parsers too.
responder = LinkEndpoint(lambda: (RELAY.current.descriptor, RELAY.current.link_key), lambda d: None)
initiator = LinkEndpoint(
    lambda: (CLIENT.current.descriptor, CLIENT.current.link_key), lambda d: None
)
PEER = ("192.0.2.1", 7733)
handshake = [initiator.connect(PEER, RELAY.identity_public, NOW)]


def _datagram(data: bytes) -> None:
    responder.receive(data, PEER, NOW)
    responder.outbox.clear()
    responder.events.clear()
    if not initiator.handshake_pending(handshake[0]):
        handshake[0] = initiator.connect(PEER, RELAY.identity_public, NOW)
    initiator.receive(data, PEER, NOW)
    initiator.outbox.clear()
    initiator.events.clear()


def _onion(data: bytes) -> None:
    try:
        shared = ONION_KEY.exchange(x25519_public(data[:32]))
    except ValueError:
        return
    with contextlib.suppress(OnionError):
        peel(shared, data)


def _envelope(data: bytes) -> None:
    for parse in (
        lambda: messaging.open_envelope(ENVELOPE_KEY, data),
        lambda: messaging.parse_fragment(data),
        lambda: messaging.ReplyBlock.decode(data),
        lambda: messaging.open_surb_payload(SURB_KEY, data),
        lambda: SurbKeys.decode(data),
    ):
        with contextlib.suppress(messaging.EnvelopeError, ValueError):
            parse()


def _directory(data: bytes) -> None:
    with contextlib.suppress(directory.DirectoryError):
        directory.verify(data, RING, NOW)
    assembler = ChunkAssembler(1 << 20)
    for chunk in (data[i : i + 600] for i in range(0, len(data), 600)):
        try:
            assembler.add(chunk)
        except CodecError:
            break


def _descriptor(data: bytes) -> None:
    with contextlib.suppress(DescriptorError):
        Descriptor.decode(data).check_valid(NOW)
    with contextlib.suppress(CertificateError):
        SigningCertificate.decode(data).check_valid(NOW)


def _config(data: bytes) -> None:
    try:
        raw = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    with contextlib.suppress(ConfigError):
        parse_config(raw, STATE / "node.toml")


FUZZ_STORE = Keystore(STATE / "keystore", ROLE_RELAY, 3600, 600)
FUZZ_STORE.init(NOW)
EPOCH_FILE = FUZZ_STORE.dir / "epoch-00000001.json"


def _keystore(data: bytes) -> None:
    EPOCH_FILE.write_bytes(data)
    with contextlib.suppress(KeystoreError):
        FUZZ_STORE.load(NOW)
    with contextlib.suppress(ReplayFilterError):
        OnionReplayFilter.read_from(io.BytesIO(data), FILTER_KEY)


PREKEYS = PrekeyStore(RELAY_STORE.dir, RELAY.identity, 7 * 86400, 86400)
BUNDLE = PREKEYS.maintain(NOW)


def _prekeys(data: bytes) -> None:
    with contextlib.suppress(PrekeyError):
        PrekeyBundle.decode(data, RELAY.identity_public, NOW).public_key()
    with contextlib.suppress(PrekeyError):
        Prekey.decode(1, data)
    with contextlib.suppress(PrekeyError):
        PREKEYS.open(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "datagram": _datagram,
    "onion": _onion,
    "envelope": _envelope,
    "directory": _directory,
    "descriptor": _descriptor,
    "config": _config,
    "keystore": _keystore,
    "prekeys": _prekeys,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs of the target's kind, to start the corpus from."""
    rng = random.Random(1)
    if target == "datagram":
        client = LinkEndpoint(
            lambda: (CLIENT.current.descriptor, CLIENT.current.link_key), lambda d: None
        )
        client.connect(PEER, RELAY.identity_public, NOW)
        return [d for d, _ in client.outbox]
    if target == "onion":
        hop = Hop(RELAY.current.descriptor.node_id, RELAY.current.descriptor.onion_key())
        return [build_packet([hop], CMD_DELIVER, bytes(16), rng.randbytes(PAYLOAD_LEN))[1]]
    if target == "envelope":
        sealed = messaging.seal(
            CLIENT.current.descriptor.onion_key(), bytes(messaging.ENVELOPE_PLAIN_LEN)
        )
        return [sealed, messaging.seal_surb_payload(SURB_KEY, messaging.SURB_ACK, b"ok")]
    if target == "directory":
        view = directory.Directory.build(directory.epoch_at(NOW), [RELAY.current.descriptor])
        signature = directory.sign(RELAY.identity, view)
        signed = directory.SignedDirectory(view, ((RELAY.identity_public, signature),)).encode()
        return [signed, *directory_messages(signed)]
    if target == "descriptor":
        # A descriptor signed by a signing key that RELAY's identity certifies.
        signer = RELAY.signing_key
        certificate = SigningCertificate.issue(
            RELAY.identity, signer.public_key().public_bytes_raw(), int(NOW) + 86400
        )
        certified = dataclasses.replace(RELAY.current.descriptor, certificate=certificate)
        return [
            RELAY.current.descriptor.encode(),
            CLIENT.current.descriptor.encode(),
            certified.encode(),
            certificate.encode(),
        ]
    if target == "config":
        relays = (RelayEntry.from_did(RELAY.did, ("10.0.0.1", 7733)),)
        return [render_config(Config(STATE / "node.toml", relays=relays)).encode()]
    if target == "keystore":
        return [(RELAY_STORE.dir / "epoch-00000001.json").read_bytes()]
    if target == "prekeys":
        return [BUNDLE.encode(), seal(BUNDLE, b"a message"), PREKEYS.held()[0].encode()]
    raise SystemExit(f"unknown target {target!r}; --list shows them")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "--list"):
        print("targets:", " ".join(TARGETS))
        return
    target = sys.argv[1]
    corpus = STATE / f"corpus-{target}"
    corpus.mkdir()
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    fuzz = TARGETS[target]
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], fuzz)
    started = time.monotonic()
    try:
        atheris.Fuzz()
    finally:
        print(f"{target}: {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    os.umask(0o077)
    main()
