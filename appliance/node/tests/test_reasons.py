"""The drop and failure reasons are one enumeration: every reason the code counts is in it,
and the README documents every member."""

from __future__ import annotations

import re
from pathlib import Path

from ringmesh.reasons import Drop, HandshakeFailure

PACKAGE = Path(__file__).parent.parent / "src" / "ringmesh"
README = Path(__file__).parent.parent / "README.md"

# How the code names a reason without the enumeration: a counter key, a reason string handed
# to HandshakeError or _fail, or one returned by an accept policy (`def _accept`).
DROPPED = re.compile(r'"dropped:([a-z_]+)"')
FAILED = re.compile(
    r'"handshake_failed:([a-z_]+)"|HandshakeError\(\s*"([a-z_]+)"|_fail\([^,]+, "([a-z_]+)"\)'
)
ACCEPT_POLICY = re.compile(r"def _accept\(.*?(?=\n    (?:@|def )|\nclass |\Z)", re.DOTALL)
STRING = re.compile(r'"([a-z_]+)"')


def literals(pattern: re.Pattern[str]) -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for match in pattern.finditer(path.read_text()):
            if pattern is ACCEPT_POLICY:
                found.update(STRING.findall(match.group(0)))
            else:
                found.update(g for g in match.groups() if g)
    return found


def test_every_reason_the_code_counts_is_in_the_enumeration() -> None:
    assert literals(DROPPED) <= {r.value for r in Drop}
    assert literals(FAILED) | literals(ACCEPT_POLICY) <= {r.value for r in HandshakeFailure}
    assert {"unpinned", "not_a_relay"} <= literals(ACCEPT_POLICY)  # the pattern finds them


def test_the_readme_documents_every_reason() -> None:
    text = README.read_text()
    for reason in [*Drop, *HandshakeFailure]:
        assert f"| `{reason.value}` |" in text, reason
