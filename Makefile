# EdgeLoop: the two commands the README starts with are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := libs/common $(wildcard services/*) apps/edgeloop
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit lint infra-up infra-down bench asyncapi clean

install: $(STAMP)

$(STAMP): Makefile constraints.txt $(foreach p,$(PACKAGES),$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(foreach p,$(PACKAGES),-e $(p)) -r requirements-dev.txt
	# flwr pins protobuf<7, typer<0.21, fastapi 0.138 (we run protobuf 7, typer 0.29, fastapi 0.165): installed
	# without its pins; the parts of it EdgeLoop runs work with ours (docs/telemetry.md, "Federated learning").
	$(BIN)/pip install -q --no-deps -c constraints.txt flwr
	touch $(STAMP)

# Standalone: in-process bus, SQLite, local folders, embedded or local MQTT broker.
demo: install
	$(BIN)/edgeloop demo

# Distributed path against real Kafka, Mosquitto and PostgreSQL, started here.
test: install
	$(BIN)/edgeloop infra up --secure
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m "not kafka and not mqtt and not postgres and not kube"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

infra-up: install
	$(BIN)/edgeloop infra up

infra-down: install
	$(BIN)/edgeloop infra down

asyncapi: install
	$(BIN)/python -m edgeloop_common.asyncapi > docs/asyncapi.yaml

clean:
	-$(BIN)/edgeloop infra down
	rm -rf $(VENV) .edgeloop
