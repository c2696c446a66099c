#!/usr/bin/env bash
# Measures what the sidecar adds to a non-streaming chat completion: wrk with one
# connection sends the same 2 KB request straight to a stub upstream, then through the
# sidecar in front of it; the difference in latency is the sidecar's cost. Also reports
# the sidecar's CPU time per request, its resident memory and its time from start to
# ready. Everything listens on 127.0.0.1; each load run is bounded by DURATION.
#
# Needs: wrk (Debian package `wrk`), curl, a release build:
#   cargo build --release -p agent-sidecar --bins --examples
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
DURATION="${DURATION:-10s}"
POLICY="${POLICY:-policies/default.yaml}"
sidecar_bin=target/release/agent-sidecar
stub_bin=target/release/examples/stub_upstream
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# A 2 KB request: a system prompt and a support conversation without PII, so the
# measurement covers a full scan that changes nothing.
python3 - "$work/body.json" <<'PY'
import json, sys
turns = [
    {"role": "system", "content": "You are a helpful support agent for an online shop. Answer briefly and politely, and only about orders, deliveries and returns."},
    {"role": "user", "content": "Hello, I ordered a pair of running shoes last week and the tracking page has not changed for three days. Could you check where the parcel is and when it will arrive?"},
    {"role": "assistant", "content": "Of course. The parcel left our warehouse on Monday and is with the courier. Deliveries in your region currently take four to five working days."},
]
body = {"model": "gpt-4o-mini", "messages": turns}
filler = "I also wanted to ask whether I can exchange them for a larger size if they do not fit, and how long a refund takes once the return arrives at your warehouse. "
while len(json.dumps(body)) < 2048:
    turns.append({"role": "user", "content": filler})
    body = {"model": "gpt-4o-mini", "messages": turns}
open(sys.argv[1], "w").write(json.dumps(body))
PY
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "r")
wrk.body = f:read("*a")
f:close()
LUA

stub_port="$(free_port)"
"$stub_bin" "127.0.0.1:$stub_port" --fixed & pids+=("$!")
proxy_port="$(free_port)"
admin_port="$(free_port)"

start_ns="$(date +%s%N)"
RUST_LOG=warn "$sidecar_bin" serve --policy "$POLICY" --listen "127.0.0.1:$proxy_port" \
    --admin-listen "127.0.0.1:$admin_port" --grpc-listen 127.0.0.1:0 --openai-upstream "http://127.0.0.1:$stub_port/v1" &
sidecar_pid="$!"
pids+=("$sidecar_pid")
for _ in $(seq 1 2000); do
    if curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.001
done
ready_ns="$(date +%s%N)"
echo "start to ready: $(( (ready_ns - start_ns) / 1000000 )) ms (includes curl polling)"
echo "idle RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$sidecar_pid/status")"

echo "request body: $(wc -c < "$work/body.json") bytes"
echo "== direct to stub"
wrk -t1 -c1 -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$stub_port/v1/chat/completions" | grep -E "Latency|50%|90%|99%|Requests/sec|requests in"

ticks_before="$(awk '{print $14 + $15}' "/proc/$sidecar_pid/stat")"
echo "== through the sidecar"
wrk -t1 -c1 -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$proxy_port/v1/chat/completions" | tee "$work/through.txt" | grep -E "Latency|50%|90%|99%|Requests/sec|requests in"
ticks_after="$(awk '{print $14 + $15}' "/proc/$sidecar_pid/stat")"
requests="$(awk '/requests in/ {print $1}' "$work/through.txt")"
hz="$(getconf CLK_TCK)"
python3 -c "print(f'sidecar CPU per request: {($ticks_after - $ticks_before) / $hz / $requests * 1e6:.1f} microseconds ({$requests} requests)')"
echo "RSS after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$sidecar_pid/status")"
