# The two set-up commands of the README: `make up` and `make test`.
.PHONY: up down status test lint bootstrap

bootstrap:
	./scripts/bootstrap.sh

up: bootstrap
	.venv/bin/gearctl cluster up --nodes 3

status:
	.venv/bin/gearctl cluster status

down:
	.venv/bin/gearctl cluster down

test: bootstrap
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Roll gearctl out with Ansible to three network-namespace hosts over ssh (root; see deploy/README.md).
.PHONY: rollout-test
rollout-test: bootstrap
	./tests/rollout/run.sh
