"""Robustness figures of the websocket server (``python -m play.serve``), measured from outside.

Starts the server as a subprocess on a free port and runs three checks against it:

1. ``bad``: one client sends ``--bad`` malformed, oversized (over ``max_message_bytes``, under
   the hard limit), out-of-range, wrongly typed and binary messages; every one must get an
   ``error`` reply, and the same connection must go on serving frames and apply a valid action.
2. ``load``: ``--clients`` clients play at once for ``--seconds`` seconds, each changing its
   held action every half second; counts frames, errors and disconnects per client and
   samples the server's resident memory (VmRSS from /proc, Linux) every second.
3. ``churn``: ``--churn`` clients connect and drop their TCP connection without a closing
   handshake at random moments (mostly while a step is running); afterwards a probe client
   must see itself as the only session, and the server's memory is read again.

Usage::

    OMP_NUM_THREADS=1 python scripts/ws_stress.py                      # shipped pong, 1000 bad, 8 x 60 s, 50 drops
    python scripts/ws_stress.py --checkpoint runs/x/bundle --seconds 10 --out stress.json

Prints one JSON object with the figures (and writes it to ``--out`` if given); exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CAP = 4096


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bad_messages(n: int, rng: random.Random) -> list[str | bytes]:
    """``n`` messages the protocol refuses, cycling through the kinds."""
    kinds = [
        lambda: "{" + "x" * rng.randint(0, 40),                                           # malformed JSON
        lambda: json.dumps({"type": "action", "action": rng.choice([6, 7, 99, -1, 10**9])}),  # out of range
        lambda: json.dumps({"type": "action", "action": rng.choice(["2", 2.5, None, True, [2]])}),
        lambda: json.dumps({"type": rng.choice(["jump", "", None, 3, "ACTION"])}),         # unknown type
        lambda: json.dumps({"type": "pause", "paused": rng.choice(["yes", 1, None])}),
        lambda: json.dumps([1, 2, 3]),                                                     # not an object
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))),              # binary
        lambda: json.dumps({"type": "reset", "pad": "p" * rng.randint(CAP, 3 * CAP)}),     # over the cap
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


async def check_bad(url: str, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    messages = bad_messages(n, rng)
    errors, frames = 0, 0
    t0 = time.perf_counter()
    async with connect(url) as ws:
        json.loads(await ws.recv())

        async def read_errors():
            nonlocal errors, frames
            while errors < n:
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    frames += 1
                elif json.loads(raw)["type"] == "error":
                    errors += 1

        reader = asyncio.create_task(read_errors())
        for m in messages:
            await ws.send(m)
        await asyncio.wait_for(reader, 120)
        elapsed = time.perf_counter() - t0
        await ws.send(json.dumps({"type": "action", "action": 3}))
        frames_after, applied = 0, None
        async with asyncio.timeout(60):
            while applied != 3 or frames_after < 3:
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    assert iio.imread(raw).shape == (64, 64, 3)
                    frames_after += 1
                elif (msg := json.loads(raw))["type"] == "stats":
                    applied = msg["action"]
    ok = errors == n and frames_after >= 3 and applied == 3
    return {"ok": ok, "sent": n, "error_replies": errors, "seconds": round(elapsed, 2),
            "frames_during": frames, "frames_after": frames_after, "valid_action_applied_after": applied == 3}


async def play_client(url: str, seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    out = {"frames": 0, "errors": 0, "disconnected": None, "last_stats": None, "bad_frames": 0}
    try:
        async with connect(url) as ws:
            json.loads(await ws.recv())
            end = time.monotonic() + seconds
            next_action = 0.0
            while (now := time.monotonic()) < end:
                if now >= next_action:
                    await ws.send(json.dumps({"type": "action", "action": rng.randrange(6)}))
                    next_action = now + 0.5
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=max(0.01, min(0.5, end - now)))
                except TimeoutError:
                    continue
                if isinstance(raw, bytes):
                    out["frames"] += 1
                    if iio.imread(raw).shape != (64, 64, 3):
                        out["bad_frames"] += 1
                else:
                    msg = json.loads(raw)
                    if msg["type"] == "error":
                        out["errors"] += 1
                    elif msg["type"] == "stats":
                        out["last_stats"] = msg
    except ConnectionClosed as e:
        out["disconnected"] = f"{e.rcvd.code if e.rcvd else None} {e.rcvd.reason if e.rcvd else ''}"
    return out


async def check_load(url: str, clients: int, seconds: float, pid: int) -> dict:
    rss: list[float] = [rss_mib(pid)]

    async def sample():
        while True:
            await asyncio.sleep(1.0)
            rss.append(rss_mib(pid))

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(play_client(url, seconds, seed) for seed in range(clients)))
    sampler.cancel()
    fps = [r["frames"] / seconds for r in results]
    ok = all(r["errors"] == 0 and r["disconnected"] is None and r["bad_frames"] == 0 and r["frames"] > 0
             for r in results)
    stats = [r["last_stats"] or {} for r in results]
    second_half = rss[len(rss) // 2:]
    return {"ok": ok, "clients": clients, "seconds": seconds,
            "frames_per_client_per_s": [round(f, 2) for f in fps], "total_frames_per_s": round(sum(fps), 2),
            "errors": sum(r["errors"] for r in results), "disconnects": [r["disconnected"] for r in results
                                                                         if r["disconnected"]],
            "step_latency_ms": [s.get("latency_ms") for s in stats],
            "dropped_frames": [s.get("dropped") for s in stats],
            "server_rss_mib": {"start": round(rss[0], 1), "max": round(max(rss), 1), "end": round(rss[-1], 1),
                               "second_half_growth": round(second_half[-1] - second_half[0], 1)}}


async def check_churn(url: str, n: int, seed: int, pid: int) -> dict:
    rng = random.Random(seed)
    rss_before = rss_mib(pid)
    for _ in range(n):
        ws = await connect(url)
        await ws.recv()                                         # hello: the session exists
        await asyncio.sleep(rng.uniform(0.0, 0.3))              # mostly while a step runs
        ws.transport.abort()                                    # no closing handshake
    await asyncio.sleep(1.0)
    async with connect(url) as probe:
        json.loads(await probe.recv())
        async with asyncio.timeout(30):
            while True:
                raw = await probe.recv()
                if isinstance(raw, str) and (msg := json.loads(raw))["type"] == "stats":
                    break
    return {"ok": msg["sessions"] == 1, "dropped_connections": n, "sessions_seen_by_probe": msg["sessions"],
            "server_rss_mib": {"before": round(rss_before, 1), "after": round(rss_mib(pid), 1)}}


def start_server(checkpoint: str, max_sessions: int) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "play.serve", f"checkpoint={checkpoint}", "port=0", "threads=1",
           f"max_sessions={max_sessions}", f"max_message_bytes={CAP}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    for line in proc.stdout:                               # skip start-up chatter until the address
        if "open http://" in line:
            url = line.split("open ", 1)[1].split()[0]
            return proc, url.replace("http://", "ws://").rstrip("/") + "/ws"
    raise RuntimeError(f"the server exited with code {proc.wait()} before printing its address")


async def main_async(args, proc: subprocess.Popen, url: str) -> dict:
    report = {"checkpoint": args.checkpoint, "server_rss_mib_idle": round(rss_mib(proc.pid), 1)}
    report["bad"] = await check_bad(url, args.bad, args.seed)
    report["load"] = await check_load(url, args.clients, args.seconds, proc.pid)
    report["churn"] = await check_churn(url, args.churn, args.seed, proc.pid)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="pong")
    p.add_argument("--bad", type=int, default=1000, help="bad messages to send")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--churn", type=int, default=50, help="connections to drop without closing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args()
    proc, url = start_server(args.checkpoint, max_sessions=args.clients)
    try:
        report = asyncio.run(main_async(args, proc, url))
        report["server_alive"] = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report["ok"] = all(report[k]["ok"] for k in ("bad", "load", "churn")) and report["server_alive"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
