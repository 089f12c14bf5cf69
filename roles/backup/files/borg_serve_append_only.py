#!/usr/bin/python3
"""`borg serve` for a backup client: append-only, refusing deletion and key rewrites.

The forced command of every client key on a backup peer:

    borg-serve-append-only --append-only --restrict-to-repository /var/lib/ringmesh-backup/<client>/borg

Borg 1.x's own `--append-only` keeps every segment on disk but still lets the client mark
archives deleted (`borg delete`, `borg prune`) and replace the repository key (`borg key
change-passphrase` rewrites the repository config and erases the old one). Either would let a
compromised relay hide or lock away its own history until an operator rolls the repository
back by hand. This is borg's own RepositoryServer with `delete` and `destroy` taken off its
allow list, writes over an existing object refused (only the manifest is rewritten by every
backup) and the key write allowed only once (by `borg init`), so those calls fail on the
client and change nothing; everything else, the arguments included, is `borg serve`.
Deletion happens only from the operator's side (playbooks/prune.yml, with a key that never
lives on a relay).
"""

import sys
from typing import Any

from borg import archiver, remote

REFUSED = ("delete", "destroy")
# The repository's table of contents, which every `borg create` writes anew (borg 1.x format).
MANIFEST_ID = bytes(32)


class AppendOnlyRepositoryServer(remote.RepositoryServer):  # type: ignore[misc]
    rpc_methods = tuple(m for m in remote.RepositoryServer.rpc_methods if m not in REFUSED)

    def put(self, id: bytes, data: bytes, wait: bool = True) -> Any:
        if bytes(id) != MANIFEST_ID:
            try:
                self.repository.get(id)
            except remote.Repository.ObjectNotFound:
                pass
            else:
                raise PermissionError("overwriting an existing object is refused; only the operator may rewrite")
        return self.repository.put(id, data, wait=wait)

    def save_key(self, keydata: Any) -> None:
        if self.repository.load_key():
            raise PermissionError("this repository's key is set; only the operator may change it")
        self.repository.save_key(keydata)


def main() -> int:
    if "--append-only" not in sys.argv[1:]:
        print("borg-serve-append-only: refusing to serve without --append-only", file=sys.stderr)
        return 2
    sys.argv[1:1] = ["serve"]
    archiver.RepositoryServer = AppendOnlyRepositoryServer
    return int(archiver.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
