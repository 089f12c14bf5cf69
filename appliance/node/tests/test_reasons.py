"""The drop and refusal reasons: one list, spelled the same in code, metrics and docs."""

from __future__ import annotations

import re
from pathlib import Path

import ringmesh
from ringmesh.reasons import Drop, Refusal

PACKAGE = Path(ringmesh.__file__).parent
README = PACKAGE.parents[1] / "README.md"


def test_every_counted_drop_is_a_listed_reason() -> None:
    counted = set()
    for source in PACKAGE.glob("*.py"):
        counted |= set(re.findall(r'"dropped:([a-z_]+)"', source.read_text()))
    assert counted  # the link layer counts its drops by name
    assert counted <= {d.value for d in Drop}


def test_the_readme_documents_every_reason() -> None:
    text = README.read_text()
    missing = [r.value for r in [*Drop, *Refusal] if f"`{r.value}`" not in text]
    assert not missing, f"undocumented in {README.name}: {missing}"
