#!/usr/bin/env bash
# Every test: set up (venv, packages, PostgreSQL), lint, then pytest on real PostgreSQL and SQLite.
# Extra arguments go to pytest. pytest's "no tests collected" (exit 5) is a failure here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --postgres --browser
.venv/bin/ruff check qubix_jupyter tests benchmarks
.venv/bin/ruff format --check qubix_jupyter tests benchmarks
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$status"
