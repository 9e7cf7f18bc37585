# switchyard — every entry point a newcomer, an operator or CI needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
LOCAL_CELL := target/debug/local-cell
# The operator CLI (cli/): `switchyard <command> --help` for every option.
SWITCHYARD := $(CARGO) run --quiet --locked -p switchyard-cli --
# The same commands with every function linked (state-machine/local): `invoke` in-process.
SWITCHYARD_LOCAL := $(CARGO) run --quiet --locked -p switchyard-local-run --bin switchyard-local --

.PHONY: help setup build test test-unit test-cell lint fmt cell-up cell-down cell-status clean-cell rehearsal rehearsal-fleet bench bench-scale start follow invoke report

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## install pinned PostgreSQL servers, PgBouncer, psql/pg_dump 15 and moto into .cache/
	bash scripts/setup.sh

build: ## a release zip per function with cargo-lambda into target/lambda/<function>/bootstrap.zip (ARCH=arm64 optional)
	bash scripts/build-lambdas.sh

test: setup ## run every test: unit tests and the local-cell tests against real servers
	bash scripts/test.sh

lint: ## rustfmt, clippy (warnings are errors), asl-validator, and infra/ (format, checkov, validate when terraform can)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	bash scripts/asl-validate.sh
	bash scripts/infra-lint.sh

fmt: ## format the code
	$(CARGO) fmt --all

rehearsal: setup ## prepare + switchover state machines on a local cell under load, audited (target/rehearsal/report.json); REHEARSAL=roundtrip switches back too
	$(CARGO) run --locked --profile rehearsal -p switchyard-local-run --bin rehearsal

rehearsal-fleet: setup ## CELLS=3 local cells through fleet.asl.json (prepare, then switchover), canary first; FLEET_FAIL=1 gives the canary a preflight blocker (target/rehearsal/fleet/)
	CELLS=$(or $(CELLS),3) $(CARGO) run --locked --profile rehearsal -p switchyard-local-run --bin rehearsal-fleet

bench: setup ## time the switchover over RUNS=5 fresh local cells (target/rehearsal/bench.json)
	RUNS=$(or $(RUNS),5) $(CARGO) run --locked --profile rehearsal -p switchyard-local-run --bin bench-switchover

bench-scale: setup ## the switchover at the fixture's size and at SCALE_BYTES (default 2 GiB) of table data: pause windows and their ratio (target/rehearsal/bench-scale.json)
	AWS_TIMINGS=$(or $(AWS_TIMINGS),instant) $(CARGO) run --locked --profile rehearsal -p switchyard-local-run --bin bench-scale

cell-up: setup ## start a local cell in the background (BLUE_PG=14 GREEN_PG=17 CELL_ROWS=1000)
	$(CARGO) build --locked -p switchyard-local-cell --bin local-cell
	$(LOCAL_CELL) up --detach

cell-down: ## stop the local cell started by cell-up
	@if [ -x $(LOCAL_CELL) ]; then $(LOCAL_CELL) down; else echo "no local cell binary"; fi

cell-status: ## is a local cell running?
	@$(LOCAL_CELL) status

start: ## start a run: CELL=cell.json STATE_MACHINE_ARN=… [PHASE=prepare|switchover|switchback|abandon-prepare|finalize] [FOLLOW=1]
	$(SWITCHYARD) start --cell "$(CELL)" --state-machine-arn "$(STATE_MACHINE_ARN)" --phase $(or $(PHASE),switchover) $(if $(FOLLOW),--follow)

follow: ## follow an execution to its end: EXECUTION_ARN=… (or HISTORY=file to replay one)
	$(SWITCHYARD) follow $(if $(HISTORY),--history "$(HISTORY)","$(EXECUTION_ARN)")

invoke: ## one function, in-process (REMOTE=1: its Lambda): FUNCTION=… CELL=cell.json [SET="mode=forward wait_seconds=30"] [RUN_ID=…] [DRY_RUN=1]
	$(SWITCHYARD_LOCAL) invoke "$(FUNCTION)" --cell "$(CELL)" $(foreach f,$(SET),--set $(f)) $(if $(RUN_ID),--run-id "$(RUN_ID)") $(if $(DRY_RUN),--dry-run) $(if $(REMOTE),--remote)

report: ## report finished executions: HISTORY=… [PREPARE_HISTORY=…] or EXECUTION_ARN=… [PREPARE_EXECUTION_ARN=…] [OUT=target/report]
	$(SWITCHYARD) report $(if $(HISTORY),--history "$(HISTORY)") $(if $(PREPARE_HISTORY),--prepare-history "$(PREPARE_HISTORY)") $(if $(EXECUTION_ARN),--execution-arn "$(EXECUTION_ARN)") $(if $(PREPARE_EXECUTION_ARN),--prepare-execution-arn "$(PREPARE_EXECUTION_ARN)") --out $(or $(OUT),target/report)
