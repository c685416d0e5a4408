#!/usr/bin/env bash
# Prepare a fresh clone: a virtual environment with the package and its test tools, and (with
# --postgres) PostgreSQL's server binaries for the throwaway test clusters. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

want_postgres=0
want_browser=0
for arg in "$@"; do
  case "$arg" in
    --postgres) want_postgres=1 ;;
    --browser) want_browser=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

pick_python() {
  for candidate in "${PYTHON:-}" python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "setup.sh: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "setup.sh: need root to run: $*" >&2
    return 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  python=$(pick_python)
  echo "setup: creating .venv with $python"
  "$python" -m venv .venv
fi

# Reinstall only when the project's dependencies changed.
stamp=.venv/.qubix-installed
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "setup: installing qubix-jupyter and its test tools into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,dev]'
  echo "$digest" >"$stamp"
fi

if [ "$want_postgres" -eq 1 ]; then
  if ! .venv/bin/python -c 'from qubix_jupyter.db.pg_cluster import find_bindir; find_bindir()' 2>/dev/null; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing PostgreSQL server binaries"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      echo "setup.sh: install PostgreSQL (initdb, pg_ctl) or set QUBIX_PG_BINDIR" >&2
      exit 1
    fi
  fi
  .venv/bin/python -c 'from qubix_jupyter.db.pg_cluster import find_bindir; print("setup: PostgreSQL binaries in", find_bindir())'
fi

if [ "$want_browser" -eq 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing Debian's Chromium for the Lab browser test"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "setup.sh: install Chromium as /usr/bin/chromium for the Lab browser test" >&2
      exit 1
    fi
  fi
  built=qubix_jupyter/labextension/static/style.js
  newest_source=$(find labextension/src labextension/style labextension/schema labextension/package.json -newer "$built" 2>/dev/null | head -n 1 || true)
  if [ ! -f "$built" ] || [ -n "$newest_source" ] || [ ! -d labextension/node_modules ]; then
    echo "setup: building the Lab extension (jlpm)"
    (cd labextension && PATH="$PWD/../.venv/bin:$PATH" jlpm install && PATH="$PWD/../.venv/bin:$PATH" jlpm build:prod)
  fi
  # An editable install copies the built extension only if it existed at install time; link the
  # build instead, so JupyterLab in .venv always serves the extension as built now.
  target=.venv/share/jupyter/labextensions/qubix-jupyter
  if [ ! -L "$target" ]; then
    rm -rf "$target"
    mkdir -p "$(dirname "$target")"
    ln -s "$PWD/qubix_jupyter/labextension" "$target"
  fi
fi
