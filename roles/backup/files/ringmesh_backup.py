#!/usr/bin/python3
"""Back up a Ringmesh relay with borg (through borgmatic) and restic, check, and restore.

Installed by roles/backup as /usr/local/sbin/ringmesh-backup and driven by its systemd units:

    ringmesh-backup init                  create the repositories that do not exist yet
    ringmesh-backup backup borg|restic    one archive in every repository of that tool
    ringmesh-backup check borg|restic     borgmatic's checks (borg check --verify-data) / restic check
    ringmesh-backup archives              every archive in every repository, newest first (JSON)
    ringmesh-backup restore --destination DIR [--expect-did DID]
                                          the newest archive that restores intact (and, with
                                          --expect-did, holds that identity), with fallbacks
    ringmesh-backup compare DIR           checksums of a restored tree against the live files

Retention, checks and hooks of borg are borgmatic's (one borgmatic config per repository);
this program only walks the repositories, records Prometheus metrics for the textfile
collector and says in the journal what failed and why. Pruning never runs here: the
repositories are append-only for this host (playbooks/prune.yml runs from the operator's side).
Secrets stay in root-only files named by the configuration; none is put on a command line.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG = Path("/etc/ringmesh-backup/config.json")
TOOLS = ("borg", "restic")
# Enough of a failing tool's stderr to say why in the journal without flooding it.
STDERR_TAIL = 1500
# How long a process a tool left behind may take to end before it is terminated.
STRAY_GRACE_SECONDS = 15.0
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class BackupError(Exception):
    """A step failed; the message says which repository and why."""


@dataclass(frozen=True)
class Repository:
    name: str  # where it lives: the peer's inventory name or the operator remote's name
    tool: str  # borg | restic
    borgmatic_config: str = ""  # borg: the borgmatic config naming this one repository
    url: str = ""  # restic: -r argument
    options: tuple[str, ...] = ()  # restic: -o options (rclone.program over SSH)

    @property
    def label(self) -> str:
        return f"{self.tool}@{self.name}"


@dataclass(frozen=True)
class Hook:
    """A command run before each backup that writes consistent copies of live data (an
    etcd snapshot, an SQLite online backup) under `paths`, which the backup then includes."""

    name: str
    command: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    client: str
    sources: tuple[str, ...]
    allowed_files: tuple[str, ...]
    excludes: tuple[str, ...]
    repositories: tuple[Repository, ...]
    restic_password_file: str
    restic_cache_dir: str
    restic_check_subset: str
    state_file: str
    metrics_dir: str
    intervals: dict[str, int]
    ringmesh: str
    node_user: str
    timeout_seconds: int
    hooks: tuple[Hook, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            raw = json.loads(path.read_text())
            borgmatic_dir = Path(str(raw["borgmatic_dir"]))
            repositories = tuple(
                Repository(
                    name=str(r["name"]),
                    tool=str(r["tool"]),
                    borgmatic_config=str(borgmatic_dir / f"{r['name']}.yaml") if r["tool"] == "borg" else "",
                    url=str(r.get("url", "")),
                    options=tuple(str(o) for o in r.get("options", [])),
                )
                for r in raw["repositories"]
            )
            hooks = tuple(
                Hook(name=str(h["name"]), command=str(h["command"]), paths=tuple(str(p) for p in h["paths"]))
                for h in raw.get("hooks", [])
            )
            hook_paths = tuple(path for hook in hooks for path in hook.paths)
            return cls(
                client=str(raw["client"]),
                # What a hook writes is backed up and allowed, whatever its files are called.
                sources=(*raw["sources"], *hook_paths),
                allowed_files=(*raw["allowed_files"], *hook_paths, *(f"{path}/*" for path in hook_paths)),
                excludes=tuple(raw["excludes"]),
                repositories=repositories,
                restic_password_file=str(raw["restic_password_file"]),
                restic_cache_dir=str(raw["restic_cache_dir"]),
                restic_check_subset=str(raw["restic_check_subset"]),
                state_file=str(raw["state_file"]),
                metrics_dir=str(raw["metrics_dir"]),
                intervals={str(k): int(v) for k, v in raw["intervals"].items()},
                ringmesh=str(raw["ringmesh"]),
                node_user=str(raw["node_user"]),
                timeout_seconds=int(raw["timeout_seconds"]),
                hooks=hooks,
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BackupError(f"{path}: unreadable configuration ({error!r})") from None

    def of_tool(self, tool: str) -> list[Repository]:
        return [r for r in self.repositories if r.tool == tool]

    def source_paths(self) -> list[str]:
        """The sources with their globs expanded (borgmatic expands its own)."""
        return sorted({path for source in self.sources for path in glob.glob(source)})


def log(message: str) -> None:
    """One line on stderr: the systemd journal of the unit that runs us."""
    print(message, file=sys.stderr, flush=True)


# --- running the tools ------------------------------------------------------------------------


def adopt_orphans() -> None:
    """Become the parent of what our tools leave behind (PR_SET_CHILD_SUBREAPER).

    restic exits before the ssh that carries its rclone connection has ended (0.14 never closes
    it; 0.18 does not wait either). Under systemd that ssh outlived the unit's main process, so
    the unit ended only when its cgroup emptied, or got SIGTERM; in containers the empty-cgroup
    notification was sometimes missed and the unit failed after TimeoutStopSec. Adopted, they
    are waited for by reap_strays() after each tool."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log(f"cannot adopt orphaned tool processes: {os.strerror(ctypes.get_errno())}")


def stray_children() -> list[int]:
    """Our children still running: with adopt_orphans(), what a finished tool left behind."""
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in children.read_text().split()]
    return pids


def children_left() -> bool:
    """Reap our children that have ended; whether any is still running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def reap_strays(grace: float = STRAY_GRACE_SECONDS) -> None:
    """Wait for the processes a finished tool left behind: SIGTERM to those still there after
    `grace` seconds, SIGKILL after as long again, each named in the journal."""
    for signal_after_grace in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not children_left():
                return
            time.sleep(0.05)
        for stray in stray_children():
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{stray}/comm").read_text().strip()
                log(f"{name} (pid {stray}) outlived its tool by {grace:g}s: sending {signal_after_grace.name}")
                os.kill(stray, signal_after_grace)
    with contextlib.suppress(ChildProcessError):
        while True:
            os.waitpid(-1, 0)


def run_tool(argv: Sequence[str], config: Config, *, env: dict[str, str] | None = None) -> str:
    """Run borgmatic/restic; stdout on success, BackupError with the stderr tail otherwise."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=config.timeout_seconds,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{argv[0]} timed out after {config.timeout_seconds}s") from None
    except OSError as error:
        raise BackupError(f"{argv[0]}: {error.strerror}") from None
    finally:
        reap_strays()
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip()[-STDERR_TAIL:]
        raise BackupError(f"{argv[0]} exited {result.returncode}: {why}")
    return result.stdout


def borgmatic(repo: Repository, config: Config, *action: str) -> str:
    # borg's JSON times are local and carry no offset: make local UTC, as parse_time reads them.
    return run_tool(["borgmatic", "-c", repo.borgmatic_config, *action], config, env=dict(os.environ, TZ="UTC"))


def restic_env(config: Config) -> dict[str, str]:
    return dict(os.environ, RESTIC_PASSWORD_FILE=config.restic_password_file, RESTIC_CACHE_DIR=config.restic_cache_dir)


def restic(repo: Repository, config: Config, *args: str) -> str:
    return run_tool(["restic", "-r", repo.url, *repo.options, *args], config, env=restic_env(config))


def json_documents(text: str) -> Iterator[Any]:
    """The JSON values in a tool's stdout: whole documents, or one per line (restic's --json)."""
    text = text.strip()
    if not text:
        return
    try:
        yield json.loads(text)
        return
    except ValueError:
        pass
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            yield json.loads(line)


# --- what is backed up ------------------------------------------------------------------------


def unexpected_files(config: Config) -> list[str]:
    """Files under the sources that no allowed pattern names.

    Everything a restore needs is in the node's config, its keystore and the SSH host keys;
    nothing on disk holds message contents (mailboxes live in memory only). A file that is
    not on the allow list might, so it stops the backup until someone has looked at it.
    """
    excluded = set(config.excludes)
    found = []
    for source in config.source_paths():
        root = Path(source)
        paths = [root] if not root.is_dir() else [p for p in root.rglob("*") if not p.is_dir()]
        for path in paths:
            name = str(path)
            if name in excluded or not path.exists():
                continue
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in config.allowed_files):
                found.append(name)
    return sorted(found)


def run_hooks(config: Config) -> None:
    """Each hook in order; the first that fails stops the backup, named with its own words."""
    for hook in config.hooks:
        began = time.time()
        try:
            subprocess.run([hook.command], check=True, capture_output=True, text=True, timeout=config.timeout_seconds)
        except subprocess.CalledProcessError as error:
            lines = (error.stderr or error.stdout or "").strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise BackupError(f"backup hook {hook.name} ({hook.command}) exited {error.returncode}: {last}") from None
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BackupError(f"backup hook {hook.name} ({hook.command}) did not run: {error}") from None
        log(f"hook {hook.name}: ok in {time.time() - began:.1f}s")


def verify_sources(config: Config) -> None:
    missing = [s for s in config.sources if not glob.glob(s)]
    if missing:
        raise BackupError(f"backup sources missing: {', '.join(missing)}")
    unexpected = unexpected_files(config)
    if unexpected:
        raise BackupError(
            "refusing to back up files outside the allow list (backup_allowed_files): " + ", ".join(unexpected)
        )


# --- metrics ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """The last run of one job (backup or check) on one repository."""

    last_success: float = 0.0
    last_attempt: float = 0.0
    success: int = 0
    duration: float = 0.0


@dataclass
class RepoState:
    backup: Outcome = field(default_factory=Outcome)
    check: Outcome = field(default_factory=Outcome)
    size_bytes: float = 0.0


def load_state(config: Config) -> dict[str, RepoState]:
    try:
        raw = json.loads(Path(config.state_file).read_text())
        return {
            key: RepoState(Outcome(**value["backup"]), Outcome(**value["check"]), float(value["size_bytes"]))
            for key, value in raw.items()
        }
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def write_atomically(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


METRICS: tuple[tuple[str, Callable[[RepoState], float], str], ...] = (
    ("last_success_timestamp_seconds", lambda s: s.backup.last_success, "Time of the last successful backup."),
    ("last_attempt_timestamp_seconds", lambda s: s.backup.last_attempt, "Time of the last backup attempt."),
    ("last_run_success", lambda s: s.backup.success, "1 if the last backup succeeded, 0 if it failed."),
    ("duration_seconds", lambda s: s.backup.duration, "Duration of the last backup attempt."),
    ("repository_size_bytes", lambda s: s.size_bytes, "Deduplicated, compressed size of the repository."),
    ("check_last_success_timestamp_seconds", lambda s: s.check.last_success, "Time of the last successful check."),
    ("check_last_attempt_timestamp_seconds", lambda s: s.check.last_attempt, "Time of the last check attempt."),
    ("check_success", lambda s: s.check.success, "1 if the last check passed, 0 if it failed."),
    ("check_duration_seconds", lambda s: s.check.duration, "Duration of the last check."),
)


def render_metrics(config: Config, state: dict[str, RepoState]) -> str:
    lines = []
    for metric, value_of, doc in METRICS:
        name = f"ringmesh_backup_{metric}"
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
        for repo in config.repositories:
            value = value_of(state.get(repo.label, RepoState()))
            lines.append(f'{name}{{tool="{repo.tool}",repository="{repo.name}"}} {value}')
    name = "ringmesh_backup_interval_seconds"
    lines += [f"# HELP {name} Scheduled time between two runs.", f"# TYPE {name} gauge"]
    for kind, seconds in sorted(config.intervals.items()):
        lines.append(f'{name}{{kind="{kind}"}} {seconds}')
    return "\n".join(lines) + "\n"


def save_state(config: Config, state: dict[str, RepoState]) -> None:
    write_atomically(Path(config.state_file), json.dumps({k: asdict(v) for k, v in state.items()}), 0o600)
    # The textfile collector reads *.prom; written atomically so it never sees half a file.
    write_atomically(Path(config.metrics_dir) / "ringmesh_backup.prom", render_metrics(config, state), 0o644)


# --- backup and check -------------------------------------------------------------------------


def borg_backup(repo: Repository, config: Config) -> float:
    """borgmatic create; returns the repository's deduplicated size in bytes."""
    out = borgmatic(repo, config, "create", "--json")
    for doc in json_documents(out):
        for result in doc if isinstance(doc, list) else [doc]:
            stats = result.get("cache", {}).get("stats", {})
            if "unique_csize" in stats:
                return float(stats["unique_csize"])
    return 0.0


def restic_backup(repo: Repository, config: Config) -> float:
    args = ["backup", "--json", "--host", config.client, "--tag", "ringmesh"]
    args += [f"--exclude={e}" for e in config.excludes]
    restic(repo, config, *args, *config.source_paths())
    out = restic(repo, config, "stats", "--json", "--mode", "raw-data")
    sizes = [doc.get("total_size", 0) for doc in json_documents(out) if isinstance(doc, dict)]
    return float(sizes[-1]) if sizes else 0.0


def run_backup(repo: Repository, config: Config, entry: RepoState) -> str:
    entry.size_bytes = borg_backup(repo, config) if repo.tool == "borg" else restic_backup(repo, config)
    return f", repository {entry.size_bytes / 1e6:.2f} MB"


def run_check(repo: Repository, config: Config, entry: RepoState) -> str:
    if repo.tool == "borg":
        borgmatic(repo, config, "check")  # which checks: the config's `checks` (data: --verify-data)
    else:
        restic(repo, config, "check", f"--read-data-subset={config.restic_check_subset}")
    return ""


JOBS = {"backup": run_backup, "check": run_check}


@contextlib.contextmanager
def one_job_at_a_time(config: Config) -> Iterator[None]:
    """Hold the host's job lock: borg's and restic's jobs share the hooks' output (two ledger
    snapshots at once collide) and the state file (the later writer would drop the other's
    result), and their timers can fire together, after a boot for one. A second job waits."""
    lock_path = Path(config.state_file).with_name("ringmesh-backup.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another backup or check job is running: waiting for it to end")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_job(config: Config, tool: str, job: str) -> int:
    """One job on every repository of one tool; 1 if any failed (the journal says which and why)."""
    with one_job_at_a_time(config):
        return run_job_locked(config, tool, job)


def run_job_locked(config: Config, tool: str, job: str) -> int:
    if job == "backup":
        run_hooks(config)
        verify_sources(config)
    state = load_state(config)
    failed = []
    for repo in config.of_tool(tool):
        entry = state.setdefault(repo.label, RepoState())
        outcome: Outcome = getattr(entry, job)
        began = time.time()
        outcome.last_attempt = began
        try:
            detail = JOBS[job](repo, config, entry)
            outcome.success = 1
            outcome.last_success = time.time()
            log(f"{job} {repo.label}: ok in {time.time() - began:.1f}s{detail}")
        except BackupError as error:
            outcome.success = 0
            failed.append(repo.label)
            log(f"{job} {repo.label}: FAILED after {time.time() - began:.1f}s: {error}")
        outcome.duration = time.time() - began
        save_state(config, state)
    if failed:
        log(f"{job} {tool}: failed for {', '.join(failed)}")
        return 1
    return 0


def borg_repository_exists(repo: Repository, config: Config) -> bool:
    try:
        borgmatic(repo, config, "rlist", "--json")
        return True
    except BackupError as error:
        if "does not exist" in str(error) or "is not a valid repository" in str(error):
            return False
        raise


def restic_repository_exists(repo: Repository, config: Config) -> bool:
    try:
        restic(repo, config, "cat", "config")
        return True
    except BackupError as error:
        # restic 0.14 says "unable to open config file", 0.18 "repository does not exist".
        if "unable to open config file" in str(error) or "does not exist" in str(error):
            return False
        raise


def init(config: Config) -> dict[str, list[str]]:
    """Create missing repositories: borg repokey-blake2 (the key inside, under the passphrase), restic init."""
    report: dict[str, list[str]] = {"created": [], "existing": [], "failed": []}
    for repo in config.repositories:
        try:
            if repo.tool == "borg":
                exists = borg_repository_exists(repo, config)
                if not exists:
                    borgmatic(repo, config, "rcreate", "--encryption", "repokey-blake2")
            else:
                exists = restic_repository_exists(repo, config)
                if not exists:
                    restic(repo, config, "init")
            report["existing" if exists else "created"].append(repo.label)
        except BackupError as error:
            log(f"init {repo.label}: FAILED: {error}")
            report["failed"].append(f"{repo.label}: {error}")
    return report


# --- archives and restore ---------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    repository: str  # Repository.label
    tool: str
    name: str  # borg archive name / restic snapshot id
    time: float  # UNIX seconds (UTC)


def parse_time(text: str) -> float:
    """borg's and restic's archive times: ISO 8601, with or without an offset (naive: UTC, see borgmatic())."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:  # restic has nanoseconds, which fromisoformat does not take
        head, _, tail = text.partition(".")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = head + "." + tail[: min(digits, 6)] + tail[digits:]
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def list_archives(repo: Repository, config: Config) -> list[Archive]:
    if repo.tool == "borg":
        docs = list(json_documents(borgmatic(repo, config, "rlist", "--json")))
        entries = [
            a for doc in docs for result in (doc if isinstance(doc, list) else [doc]) for a in result["archives"]
        ]
        return [Archive(repo.label, "borg", str(a["name"]), parse_time(str(a["time"]))) for a in entries]
    docs = list(json_documents(restic(repo, config, "snapshots", "--json", "--host", config.client)))
    snapshots = [s for doc in docs for s in (doc if isinstance(doc, list) else [])]
    return [Archive(repo.label, "restic", str(s["id"]), parse_time(str(s["time"]))) for s in snapshots]


@dataclass
class Candidates:
    archives: list[Archive] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # repository label -> why


def gather(config: Config) -> Candidates:
    """Every archive of every repository, newest first; a repository that does not answer is noted."""
    found = Candidates()
    for repo in config.repositories:
        try:
            found.archives += list_archives(repo, config)
        except BackupError as error:
            found.unreachable[repo.label] = str(error)
            log(f"archives {repo.label}: unreachable: {error}")
    # Newest first; at equal times the configured order (borg before restic, first peer first).
    order = {r.label: i for i, r in enumerate(config.repositories)}
    found.archives.sort(key=lambda a: (-a.time, order.get(a.repository, 0)))
    return found


def extract(archive: Archive, repo: Repository, config: Config, into: Path) -> None:
    """Restore one archive into `into`; a damaged chunk or pack makes it fail.

    borg authenticates every chunk it reads (a flipped byte is an integrity error);
    restic's --verify reads every restored file back and compares it with the snapshot.
    """
    if archive.tool == "borg":
        borgmatic(repo, config, "extract", "--archive", archive.name, "--destination", str(into))
    else:
        restic(repo, config, "restore", archive.name, "--target", str(into), "--verify")
        # restic 0.14 reports some read errors on stderr and still exits 0: trust only what verified.
    if not any(into.iterdir()):
        raise BackupError("the archive restored no files")


def restored_did(root: Path, config: Config) -> str:
    """The did:key of a restored keystore, computed by the node's own CLI as the node's user."""
    state_dir = root / "var" / "lib" / "ringmesh"
    keys = state_dir / "keys"
    if not (keys / "identity.key").is_file():
        raise BackupError("the archive holds no keystore (var/lib/ringmesh/keys/identity.key)")
    # The CLI refuses keys that the running user does not own or that others may read.
    subprocess.run(["chown", "-R", f"{config.node_user}:", str(state_dir)], check=True)
    for path in [root, root / "var", root / "var" / "lib"]:
        path.chmod(0o711)
    node_config = root / "restore-check.toml"
    node_config.write_text(
        f'[node]\nrole = "relay"\nname = "restore-check"\nstate_dir = {json.dumps(str(state_dir))}\n'
    )
    node_config.chmod(0o644)
    out = run_tool(
        [
            "runuser",
            "-u",
            config.node_user,
            "--",
            config.ringmesh,
            "keys",
            "show",
            "--public",
            "--json",
            "--config",
            str(node_config),
        ],
        config,
    )
    node_config.unlink()
    return str(json.loads(out)["did"])


@dataclass
class RestoreReport:
    repository: str
    tool: str
    archive: str
    archive_time: str
    age_seconds: float
    did: str
    destination: str
    skipped: list[dict[str, str]]


def restore(config: Config, destination: Path, expect_did: str | None) -> RestoreReport:
    found = gather(config)
    skipped = [
        {"repository": label, "archive": "", "reason": f"unreachable: {why}"}
        for label, why in found.unreachable.items()
    ]
    repos = {r.label: r for r in config.repositories}
    destination.mkdir(mode=0o711, parents=True, exist_ok=True)
    destination.chmod(0o711)  # the node's user checks the identity inside; it lists nothing here
    for number, archive in enumerate(found.archives):
        attempt = destination / f"attempt-{number}"
        shutil.rmtree(attempt, ignore_errors=True)
        attempt.mkdir(mode=0o700)
        try:
            extract(archive, repos[archive.repository], config, attempt)
            # Reading the identity needs the node's CLI; a plain file restore does without it.
            did = restored_did(attempt, config) if expect_did or Path(config.ringmesh).exists() else ""
            if expect_did and did != expect_did:
                raise BackupError(f"it holds {did}, not the pinned {expect_did}")
        except (BackupError, subprocess.CalledProcessError) as error:
            skipped.append({"repository": archive.repository, "archive": archive.name, "reason": str(error)})
            log(f"restore {archive.repository} {archive.name}: skipped: {error}")
            shutil.rmtree(attempt, ignore_errors=True)
            continue
        final = destination / "restored"
        shutil.rmtree(final, ignore_errors=True)
        attempt.rename(final)
        return RestoreReport(
            repository=archive.repository,
            tool=archive.tool,
            archive=archive.name,
            archive_time=datetime.fromtimestamp(archive.time, UTC).isoformat(timespec="seconds"),
            age_seconds=round(time.time() - archive.time, 1),
            did=did,
            destination=str(final),
            skipped=skipped,
        )
    reasons = "; ".join(f"{s['repository']} {s['archive']}: {s['reason']}" for s in skipped) or "no archives"
    raise BackupError(f"no archive could be restored ({reasons})")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(restored: Path) -> dict[str, list[str]]:
    """Each restored file against its live counterpart: same, changed since the archive, or gone."""
    report: dict[str, list[str]] = {"same": [], "changed": [], "missing": []}
    for path in sorted(p for p in restored.rglob("*") if p.is_file() and not p.is_symlink()):
        live = Path("/") / path.relative_to(restored)
        if not live.is_file():
            report["missing"].append(str(live))
        elif sha256(live) == sha256(path):
            report["same"].append(str(live))
        else:
            report["changed"].append(str(live))
    return report


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringmesh-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help=f"configuration (default {CONFIG})")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create missing repositories; prints JSON")
    for name in ("backup", "check"):
        sub = commands.add_parser(name, help=f"{name} every repository of one tool")
        sub.add_argument("tool", choices=TOOLS)
    commands.add_parser("archives", help="every archive, newest first (JSON)")
    commands.add_parser("verify-sources", help="fail on files under the sources that are not allowed")
    restore_parser = commands.add_parser("restore", help="restore the newest intact archive (JSON report)")
    restore_parser.add_argument("--destination", type=Path, required=True)
    restore_parser.add_argument("--expect-did", help="skip archives whose identity is not this did:key")
    compare_parser = commands.add_parser("compare", help="a restored tree against the live files (JSON)")
    compare_parser.add_argument("restored", type=Path)
    args = parser.parse_args(argv)
    os.umask(0o077)
    adopt_orphans()
    try:
        config = Config.load(args.config)
        if args.command == "init":
            report = init(config)
            print(json.dumps(report))
            return 1 if report["failed"] else 0
        if args.command in JOBS:
            return run_job(config, args.tool, args.command)
        if args.command == "archives":
            found = gather(config)
            print(json.dumps({"archives": [asdict(a) for a in found.archives], "unreachable": found.unreachable}))
            return 0
        if args.command == "verify-sources":
            verify_sources(config)
            return 0
        if args.command == "compare":
            print(json.dumps(compare(args.restored)))
            return 0
        report_ = restore(config, args.destination, args.expect_did)
        print(json.dumps(asdict(report_)))
        return 0
    except BackupError as error:
        log(f"ringmesh-backup {args.command}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
