#!/usr/bin/env bash
# The test command of the README: set up .venv (idempotent) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k loading`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
