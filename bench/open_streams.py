"""Resident memory of the sidecar with many open guarded streams.

Starts a stub upstream (asyncio, 127.0.0.1) that answers every chat completion with an
event stream sending one small text event per second for HOLD_SECONDS, starts the
release sidecar in front of it, opens STREAMS concurrent streaming requests, and reads
the sidecar's VmRSS once every stream has received its first event. Everything listens
on loopback and the run ends by itself after HOLD_SECONDS.

Run: ulimit -n 8192 && python3 bench/open_streams.py
(after cargo build --release -p agent-sidecar --bins; each stream needs two sockets in the
sidecar, so the default limit of 1,024 open files is too low.)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request

STREAMS = int(os.environ.get("STREAMS", "1000"))
HOLD_SECONDS = int(os.environ.get("HOLD_SECONDS", "15"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "agent-sidecar")

CHUNK = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "created": 1733000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"content": "Your parcel is on its way. "}, "finish_reason": None}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def stub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        event = f"data: {json.dumps(CHUNK)}\n\n".encode()
        for _ in range(HOLD_SECONDS):
            writer.write(event)
            await writer.drain()
            await asyncio.sleep(1)
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def client(port: int, first_event: asyncio.Event, counter: list[int]) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Where is my parcel?"}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    seen = False
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout=HOLD_SECONDS + 10)
            if not data:
                break
            if not seen and b"content" in data:
                seen = True
                counter[0] += 1
                if counter[0] == STREAMS:
                    first_event.set()
    finally:
        writer.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main() -> None:
    upstream_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    server = await asyncio.start_server(stub, "127.0.0.1", upstream_port, backlog=2048)
    sidecar = subprocess.Popen(
        [BINARY, "serve", "--listen", f"127.0.0.1:{proxy_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
         "--grpc-listen", "127.0.0.1:0",
         "--openai-upstream", f"http://127.0.0.1:{upstream_port}/v1"],
        env={**os.environ, "RUST_LOG": "warn"},
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1)
                break
            except OSError:
                await asyncio.sleep(0.05)
        idle = rss_kib(sidecar.pid)
        first_event = asyncio.Event()
        counter = [0]
        tasks = [asyncio.create_task(client(proxy_port, first_event, counter)) for _ in range(STREAMS)]
        started = time.monotonic()
        await asyncio.wait_for(first_event.wait(), timeout=HOLD_SECONDS)
        open_rss = rss_kib(sidecar.pid)
        print(f"streams: {STREAMS}, all streaming after {time.monotonic() - started:.1f} s")
        print(f"sidecar VmRSS idle: {idle / 1024:.1f} MiB, with {STREAMS} open streams: {open_rss / 1024:.1f} MiB")
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=10)
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
