#!/usr/bin/env bash
# Build the sidecar, then run the Rust tests, the Python SDK end-to-end suite and the
# Kubernetes manifest checks.
# This is the project's single test command. It works from any directory.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

cargo build -p agent-sidecar --bins

venv=tests/.venv
requirements=(tests/sdk/requirements.txt tests/manifests/requirements.txt)
# The stamp stores the hash of the requirements last installed into this venv.
stamp="$venv/.requirements.sha256"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
requirements_hash="$(cat "${requirements[@]}" | sha256sum | cut -d ' ' -f 1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$requirements_hash" ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r "${requirements[0]}" -r "${requirements[1]}"
    echo "$requirements_hash" > "$stamp"
fi

cargo test --workspace
"$venv/bin/python" -m pytest -q tests/sdk
# Renders manifests/ with the venv's kubectl and validates every object offline.
"$venv/bin/python" -m pytest -q tests/manifests
