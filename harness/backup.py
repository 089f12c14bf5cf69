"""Backups as the tests see them (roles/backup): where a peer keeps its clients' repositories,
and how a test damages an archive the way a failing disk would."""

from __future__ import annotations

from typing import Any

import testinfra

STORE = "/var/lib/ringmesh-backup"  # backup_store_dir on the peers


def damage_newest(peer: testinfra.host.Host, client: str, archive: dict[str, Any]) -> str:
    """Flip 16 bytes in the middle of the newest data file of the archive's repository on the
    peer (`archive` as `ringmesh-backup archives` lists it): borg's newest segment holds this
    archive, restic's newest pack the files that changed last. Returns the file."""
    tool = archive["repository"].split("@", 1)[0]
    newest_file = peer.check_output(f"ls -t {STORE}/{client}/{tool}/data/*/* | head -1").strip()
    peer.check_output(
        f"python3 -c \"import os; f=open('{newest_file}','r+b'); n=os.path.getsize('{newest_file}'); "
        f'f.seek(n // 2); b=f.read(16); f.seek(n // 2); f.write(bytes(x ^ 0xFF for x in b))"'
    )
    return str(newest_file)
