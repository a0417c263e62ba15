#!/usr/bin/env bash
# The test command of the README: set up .venv (idempotent), lint and check the formatting with ruff,
# then run the whole test suite. Extra arguments go to pytest, e.g. `bash tests/run.sh -k loading`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check aeaudit tests examples benchmarks
.venv/bin/ruff format --check aeaudit tests examples benchmarks
exec .venv/bin/python -m pytest -q "$@"
