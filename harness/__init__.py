"""What the lab, the end-to-end tests and the Molecule verifiers share: running Ansible with
machine-readable results, the lab's hosts, and reading a node's `ringmesh ... --json`."""
