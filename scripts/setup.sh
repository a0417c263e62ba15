#!/usr/bin/env bash
# Create .venv in the repository (once) and install aeaudit with its test extras into it.
# Safe to run again: it reinstalls only when pyproject.toml changed (the package itself is editable).
# torch is installed first, pinned, so that pip takes the CPU wheel kept on this machine's disk
# instead of resolving a CUDA build from the index; set TORCH_SPEC to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP=.venv/.aeaudit-installed

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "setup: aeaudit needs Python >= 3.10; '$PYTHON' is $("$PYTHON" -V 2>&1 || echo missing). Set PYTHON=..." >&2
        exit 2
    fi
    echo "setup: creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv .venv
fi

want="$(cat pyproject.toml) $TORCH_SPEC"
want_hash=$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_hash" ]; then
    echo "setup: .venv is up to date"
    exit 0
fi
echo "setup: installing $TORCH_SPEC, then aeaudit[test] (editable) into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "$want_hash" > "$STAMP"
echo "setup: done ($(.venv/bin/python -c 'import torch, aeaudit; print("aeaudit", aeaudit.__version__, "· torch", torch.__version__)'))"
