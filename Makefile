# The two commands a newcomer needs: `make lab` and `make test`. Everything else is a
# piece of those two.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help bootstrap venv base-images images image lab lab-down lint test test-node test-ledger test-infra test-images bench bench-ledger fuzz clean

help:
	@echo "make lab        a local relay fleet (podman containers) provisioned by ansible-playbook"
	@echo "make lab-down   remove everything the lab made"
	@echo "make test       every test: lint, node unit/integration, Molecule scenarios, the fleet end to end"
	@echo "make bench      the node's relay throughput and latency benchmark, and the relay under flood"
	@echo "make image      the appliance images (raw, qcow2, Vagrant box, podman) in build/images/trixie"
	@echo "make bench-ledger  the ledger's proof and commit benchmark"
	@echo "make fuzz       coverage-guided fuzzing of the node's parsers (FUZZ_RUNS per target)"

bootstrap:
	scripts/bootstrap-host

$(VENV)/.stamp: requirements-dev.txt appliance/node/pyproject.toml appliance/ledger/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q -e 'appliance/node[test]'
	$(VENV)/bin/pip install -q -e 'appliance/ledger[test]'
	touch $@

venv: bootstrap $(VENV)/.stamp

# The plain Debian base images (both releases at once: debootstrap mostly waits on the
# mirror), and the test image of the per-role scenarios on top of trixie's.
base-images: venv
	images/base/build trixie & trixie=$$!; images/base/build bookworm & bookworm=$$!; \
	  wait $$trixie; wait $$bookworm

images: base-images
	images/test/build trixie

# The hardened appliance images, built by playbooks/image.yml (tests/test_image.py boots them).
image: venv base-images
	images/build --suite trixie

lab: venv base-images
	lab/lab up

lab-down: venv
	lab/lab down

lint: venv
	python -m harness.suite lint

test-node: venv
	python -m harness.suite node

# The ledger's tests start their own etcd and PostgreSQL servers (Debian's, from bootstrap).
test-ledger: venv
	python -m harness.suite ledger

test-infra: venv images
	python -m harness.suite infra

# The appliance image built and booted (two VMs under QEMU), and the Vagrantfile validated.
test-images: venv
	python -m harness.suite images

# Every stage, then a table of how long each step and each test took.
test: venv images
	python -m harness.suite

bench: venv
	python appliance/node/bench/bench_relay.py
	python appliance/node/bench/bench_flood.py

bench-ledger: venv
	python appliance/ledger/bench/bench_ledger.py

# Coverage-guided fuzzing of every network and file parser (atheris), FUZZ_RUNS inputs each.
FUZZ_RUNS ?= 1500000
fuzz: venv
	pip install -q -e 'appliance/node[fuzz]'
	for target in $$(python appliance/node/fuzz/fuzz.py --list | cut -d: -f2); do \
		python appliance/node/fuzz/fuzz.py $$target -runs=$(FUZZ_RUNS) -max_len=4096 \
			-artifact_prefix=fuzz-$$target- || exit 1; \
	done

clean: lab-down
	rm -rf $(VENV)
