#!/usr/bin/env bash
# The main job: set up, then run the market end to end on the embedded defaults.
# `bash scripts/demo.sh --postgres` also installs PostgreSQL's server binaries when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
for arg in "$@"; do
  if [ "$arg" = "--postgres" ]; then setup_args=(--postgres); fi
done
bash scripts/setup.sh "${setup_args[@]+"${setup_args[@]}"}"
exec .venv/bin/qubix demo "$@"
