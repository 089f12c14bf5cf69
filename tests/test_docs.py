"""The documents name only things that exist, and the repository names no build machine.

Every Markdown file tracked by git is read. What its code (inline `spans` and fenced blocks,
without their shell comments) names is checked against the repository:

- every playbook (`playbooks/NAME.yml`) exists and passes `ansible-playbook --syntax-check`
  with the example inventory;
- every `make TARGET` is a target of the Makefile;
- every repository path exists (`inventories/myfleet/...` is the example inventory copied),
  a file named without its directory (`smoke.yml`) exists somewhere, a path that starts a
  command line is an executable file, and `FILE.py::test_name` names a test that FILE defines;
- every `ringmesh ...` and `ringmesh-ledger ...` command answers `--help` with exit 0;
- every relative link between the files resolves, down to the heading an anchor names.

And no tracked file holds a path of the machine it was written on (home directories, scratch
directories, build roots).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_INVENTORY = "inventories/example"
# The operator's copy of the example inventory, as README.md and docs/operations.md call it.
OPERATOR_INVENTORY = "inventories/myfleet"

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`\n]+)`")
SHELL_COMMENT = re.compile(r"(?:^|\s)#.*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PLAYBOOK = re.compile(r"(?<![\w/.-])playbooks/([\w.-]+\.ya?ml)\b")
MAKE = re.compile(r"(?<![\w/.-])make((?:\s+[a-z][\w-]*)+)")
TEST_REF = re.compile(r"(?<![\w/.-])([\w./-]+\.py)::(\w+)")
CLI = re.compile(r"(?<![\w/.-])(ringmesh(?:-ledger)?)(?![\w.-])")
WORD = re.compile(r"[a-z][a-z-]*")
PATH_CHARS = r"[\w.-]+(?:/[\w.-]+)*"
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")

# Paths of the machine a file was written on. Pieces are joined so this file does not match.
# Nowhere: directories that only a build or CI machine has, and this checkout's own location.
MACHINE_PATHS = [
    re.compile("(?<![\\w.-])/" + "(?:work|check|Users)" + "/"),
    re.compile(re.escape(str(REPO)) + r"\b"),
]
# Not in what people read: a home directory, root's, a scratch directory. Code may name them
# as paths on the hosts it manages (/root/.ssh in an image, a test's file in root's home).
DOC_MACHINE_PATHS = [
    re.compile("(?<![\\w.-])/" + "home" + "/[a-z_][\\w-]*/"),
    re.compile("(?<![\\w.-])/" + "(?:root|tmp)" + "/"),
]


def machine_paths(name: str) -> list[re.Pattern[str]]:
    return MACHINE_PATHS + (DOC_MACHINE_PATHS if name.endswith(".md") else [])


@cache
def git_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


MARKDOWN = sorted(name for name in git_files() if name.endswith(".md"))
TOP_LEVEL = sorted({name.split("/")[0] for name in git_files() if "/" in name})
# A repository path; not one followed by a placeholder (`roles/<role>`) or a glob (`appliance/*/bench`).
REPO_PATH = re.compile(rf"(?<![\w/.<-])((?:\./)?(?:{'|'.join(map(re.escape, TOP_LEVEL))})/{PATH_CHARS})(?![\w/<*{{])")


def code_of(text: str) -> list[str]:
    """The code a Markdown text shows: each line of a fenced block, then each inline span."""
    snippets = []
    for block in FENCE.findall(text):
        snippets += [SHELL_COMMENT.sub("", line) for line in block.splitlines()]
    prose = FENCE.sub("", text)
    snippets += INLINE.findall(prose)
    return [s.strip() for s in snippets if s.strip()]


@cache
def snippets() -> list[tuple[str, str]]:
    """(document, code snippet) for every Markdown file."""
    return [(doc, snippet) for doc in MARKDOWN for snippet in code_of((REPO / doc).read_text())]


def named(pattern: re.Pattern[str], group: int = 1, per_document: bool = False) -> list[tuple[str, str]]:
    """(document, match) for every match of pattern in the documents' code: once per document
    that names it, or only where it is first named."""
    seen: dict[tuple[str, str], str] = {}
    for doc, snippet in snippets():
        for match in pattern.finditer(snippet):
            item = match.group(group).strip()
            seen.setdefault((doc if per_document else "", item), doc)
    return sorted(((doc, item) for (_, item), doc in seen.items()), key=lambda case: (case[1], case[0]))


def on_disk(path: str, doc: str) -> Path:
    """Where a path named in doc is: from the repository root, else (a package's README naming
    its own tests/) from the document's directory."""
    path = path.removeprefix("./")
    if path == OPERATOR_INVENTORY or path.startswith(OPERATOR_INVENTORY + "/"):
        path = EXAMPLE_INVENTORY + path[len(OPERATOR_INVENTORY) :]
    from_root = REPO / path
    return from_root if from_root.exists() else (REPO / doc).parent / path


def tool(name: str) -> str:
    """A command from the venv that runs these tests, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run the tests from the repository's venv (make venv)")
    return found


def ids(cases: list[tuple[str, str]]) -> list[str]:
    return [f"{doc}:{item}" for doc, item in cases]


PLAYBOOKS = named(PLAYBOOK, 0)


@pytest.mark.parametrize(("doc", "playbook"), PLAYBOOKS, ids=ids(PLAYBOOKS))
def test_named_playbook_passes_syntax_check(doc: str, playbook: str) -> None:
    assert (REPO / playbook).is_file(), f"{doc} names {playbook}, which does not exist"
    result = subprocess.run(
        [tool("ansible-playbook"), "-i", EXAMPLE_INVENTORY, "--syntax-check", playbook],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        check=False,
    )
    assert result.returncode == 0, f"{doc} names {playbook}: {result.stdout}{result.stderr}"


@cache
def make_targets() -> frozenset[str]:
    makefile = (REPO / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", makefile, re.MULTILINE))


MAKE_TARGETS = [(doc, target) for doc, targets in named(MAKE) for target in targets.split()]


@pytest.mark.parametrize(("doc", "target"), MAKE_TARGETS, ids=ids(MAKE_TARGETS))
def test_named_make_target_exists(doc: str, target: str) -> None:
    assert target in make_targets(), f"{doc} names `make {target}`; the Makefile has {sorted(make_targets())}"


PATHS = named(REPO_PATH, per_document=True)
# A file named without its directory (`smoke.yml`, `converge.yml`, `suite.py`): one of the
# repository's own kinds of file (configs on hosts, like node.toml, are not in the repository).
BARE_FILE = re.compile(r"(?<![\w/.-])([\w-]+\.(?:ya?ml|py|md|j2))(?![\w/.-])")
BARE_FILES = named(BARE_FILE)


@pytest.mark.parametrize(("doc", "path"), PATHS, ids=ids(PATHS))
def test_named_path_exists(doc: str, path: str) -> None:
    assert on_disk(path, doc).exists(), f"{doc} names {path}, which does not exist"


@pytest.mark.parametrize(("doc", "name"), BARE_FILES, ids=ids(BARE_FILES))
def test_named_file_exists_somewhere(doc: str, name: str) -> None:
    assert any(Path(path).name == name for path in git_files()), f"{doc} names {name}, which no directory holds"


def commands() -> list[tuple[str, str]]:
    """(document, path) for every repository path that starts a command line."""
    found: dict[str, str] = {}
    for doc, snippet in snippets():
        words = snippet.split()
        while words and (words[0] == "sudo" or ENV_ASSIGNMENT.match(words[0])):
            words = words[1:]
        if not words or not REPO_PATH.fullmatch(words[0]):
            continue
        script = on_disk(words[0], doc)
        # A file with arguments, or a bare file without a suffix (`lab/lab`), is run.
        if script.is_file() and (len(words) > 1 or not script.suffix):
            found.setdefault(words[0], doc)
    return [(doc, path) for path, doc in sorted(found.items())]


COMMANDS = commands()


@pytest.mark.parametrize(("doc", "path"), COMMANDS, ids=ids(COMMANDS))
def test_named_script_is_executable(doc: str, path: str) -> None:
    assert os.access(on_disk(path, doc), os.X_OK), f"{doc} runs {path}, which is not executable"


TESTS = named(TEST_REF, 0, per_document=True)


@pytest.mark.parametrize(("doc", "ref"), TESTS, ids=ids(TESTS))
def test_named_test_exists(doc: str, ref: str) -> None:
    path, name = ref.split("::")
    assert on_disk(path, doc).is_file(), f"{doc} names {path}, which does not exist"
    source = on_disk(path, doc).read_text()
    assert re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", source, re.MULTILINE), (
        f"{doc} names {ref}: {path} defines no {name}"
    )


def subcommands(tokens: list[str]) -> list[list[str]]:
    """The subcommand words at the start of a command line's arguments: options before the
    first word are skipped with their values (`ringmesh-ledger --config FILE run`), `a|b` is
    either word, and the first option or other token after a word ends them."""
    chains: list[list[str]] = [[]]
    while tokens:
        token, tokens = tokens[0], tokens[1:]
        if token.startswith("-") and chains == [[]]:
            if tokens and not tokens[0].startswith("-") and "=" not in token:
                tokens = tokens[1:]
        elif all(WORD.fullmatch(alternative) for alternative in token.split("|")):
            chains = [[*chain, alternative] for chain in chains for alternative in token.split("|")]
        else:
            break
    return chains


def cli_commands() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for doc, snippet in snippets():
        for match in CLI.finditer(snippet):
            for chain in subcommands(snippet[match.end() :].split()):
                found.setdefault(" ".join([match.group(1), *chain]), doc)
    return [(doc, command) for command, doc in sorted(found.items())]


CLI_COMMANDS = cli_commands()


@pytest.mark.parametrize(("doc", "command"), CLI_COMMANDS, ids=ids(CLI_COMMANDS))
def test_named_cli_command_answers_help(doc: str, command: str) -> None:
    program, *words = command.split()
    result = subprocess.run([tool(program), *words, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{doc} names `{command}`, which {program} does not know: {result.stderr}"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", markdown), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def links() -> list[tuple[str, str]]:
    found = []
    for doc in MARKDOWN:
        prose = FENCE.sub("", (REPO / doc).read_text())
        for target in LINK.findall(prose):
            if not re.match(r"^[a-z][a-z+.-]*:", target):
                found.append((doc, target))
    return found


LINKS = links()


@pytest.mark.parametrize(("doc", "target"), LINKS, ids=ids(LINKS))
def test_relative_link_resolves(doc: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    resolved = (REPO / doc).parent / path if path else REPO / doc
    assert resolved.exists(), f"{doc} links {target}: {path} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors(resolved.read_text()), f"{doc} links {target}: no heading makes #{anchor}"


def test_no_tracked_file_holds_a_build_machine_path() -> None:
    offenders = []
    for name in git_files():
        try:
            text = (REPO / name).read_text()
        except UnicodeDecodeError:
            continue
        patterns = machine_paths(name)
        for number, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in patterns):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "paths of a build machine:\n" + "\n".join(offenders)


def test_the_documents_name_something() -> None:
    """Guards the extraction itself: an empty list would make every check above pass vacuously."""
    assert len(PLAYBOOKS) >= 4 and len(MAKE_TARGETS) >= 5 and len(CLI_COMMANDS) >= 5
    assert len(PATHS) >= 20 and len(BARE_FILES) >= 10 and len(COMMANDS) >= 2 and len(TESTS) >= 20 and len(LINKS) >= 5
