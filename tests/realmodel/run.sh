#!/usr/bin/env bash
# Set up (once) and start the llama.cpp model server on loopback, run the real-model
# tests through the sidecar, and stop the server by its PID.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
data="${DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/agent-sidecar-realmodel/data}"
port="${PORT:-18080}"

if [[ ! -f "$data/gemma-3-270m-q4_k_m.chat.gguf" ]]; then
    bash "$here/setup.sh"
fi
PORT="$port" bash "$here/start_server.sh"
trap 'bash "$here/stop_server.sh"' EXIT

cd "$repo_root"
cargo build -p agent-sidecar --bins
if [[ ! -x tests/.venv/bin/python ]]; then
    python3 -m venv tests/.venv
    tests/.venv/bin/python -m pip install -q -r tests/sdk/requirements.txt
fi
AGENT_SIDECAR_REALMODEL_URL="http://127.0.0.1:$port/v1" \
    tests/.venv/bin/python -m pytest -v tests/sdk/test_realmodel.py
