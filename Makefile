# The two commands a newcomer needs: `make lab` and `make test`. Everything else is a
# piece of those two.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Molecule scenarios, cheapest first; `default` is the whole fleet on three hosts.
SCENARIOS := supervisor firewall hardening keys node backup default

.PHONY: help bootstrap venv images lab lab-down lint test test-node test-infra test-e2e bench clean

help:
	@echo "make lab        a local relay fleet (podman containers) provisioned by ansible-playbook"
	@echo "make lab-down   remove everything the lab made"
	@echo "make test       every test: lint, node unit/integration, Molecule scenarios, lab end-to-end"
	@echo "make bench      the node's relay throughput and latency benchmark"

bootstrap:
	scripts/bootstrap-host

$(VENV)/.stamp: requirements-dev.txt appliance/node/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q -e 'appliance/node[test]'
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

test-node: venv
	pytest -q appliance/node/tests

# Molecule and the lab end-to-end test run under pytest so `make test` ends on one
# summary line that counts every scenario.
test-infra: venv images
	pytest -v tests

test: lint test-node test-infra

bench: venv
	python appliance/node/bench/bench_relay.py

clean: lab-down
	rm -rf $(VENV)
