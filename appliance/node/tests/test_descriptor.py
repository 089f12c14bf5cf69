from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import credentials
from ringmesh.descriptor import DESCRIPTOR_LEN, Descriptor, DescriptorError
from ringmesh.wire import ROLE_RELAY


def test_round_trip_and_tamper() -> None:
    desc, _ = credentials(ROLE_RELAY)
    raw = desc.encode()
    assert len(raw) == DESCRIPTOR_LEN
    assert Descriptor.decode(raw) == desc
    desc.check_valid(time.time())
    with pytest.raises(DescriptorError):
        desc.check_valid(time.time() + 7200)
    for offset in (1, 10, 40, 100, DESCRIPTOR_LEN - 1):
        bad = bytearray(raw)
        bad[offset] ^= 1
        with pytest.raises(DescriptorError):
            Descriptor.decode(bytes(bad))


@given(st.binary(min_size=DESCRIPTOR_LEN, max_size=DESCRIPTOR_LEN))
def test_descriptor_parser_never_crashes(data: bytes) -> None:
    with pytest.raises(DescriptorError):
        Descriptor.decode(data)
