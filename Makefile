# The two commands a newcomer needs: `make lab` and `make test`. Everything else is a
# piece of those two.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Molecule scenarios, cheapest first; `default` is the whole fleet on three hosts.
SCENARIOS := supervisor firewall hardening keys node default

.PHONY: help bootstrap venv images lab lab-down lint test test-node test-ledger test-infra test-e2e bench bench-ledger clean

help:
	@echo "make lab        a local relay fleet (podman containers) provisioned by ansible-playbook"
	@echo "make lab-down   remove everything the lab made"
	@echo "make test       every test: lint, node unit/integration, Molecule scenarios, lab end-to-end"
	@echo "make bench      the node's relay throughput and latency benchmark"
	@echo "make bench-ledger  the ledger's proof and commit benchmark"

bootstrap:
	scripts/bootstrap-host

$(VENV)/.stamp: requirements-dev.txt appliance/node/pyproject.toml appliance/ledger/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q -e 'appliance/node[test]'
	$(VENV)/bin/pip install -q -e 'appliance/ledger[test]'
	touch $@

venv: bootstrap $(VENV)/.stamp

images: bootstrap
	images/base/build trixie
	images/base/build bookworm

lab: venv images
	lab/lab up

lab-down: venv
	lab/lab down

lint: venv
	yamllint -s .
	ansible-lint
	ruff check . lab/lab
	mypy
	cd appliance/node && mypy
	cd appliance/ledger && mypy

test-node: venv
	pytest -q appliance/node/tests

# Needs etcd-server and postgresql-15 from Debian (the tests start their own servers).
test-ledger: venv
	pytest -q appliance/ledger/tests

# Molecule and the lab end-to-end test run under pytest so `make test` ends on one
# summary line that counts every scenario.
test-infra: venv images
	pytest -v tests

test: lint test-node test-ledger test-infra

bench: venv
	python appliance/node/bench/bench_relay.py

bench-ledger: venv
	python appliance/ledger/bench/bench_ledger.py

clean: lab-down
	rm -rf $(VENV)
