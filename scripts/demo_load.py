"""Cold start and load test of ``fm-edge demo``: how long until the page is served, and what N concurrent
``gradio_client`` requests get (answers, times, the server's memory).

    python scripts/demo_load.py --model fm_edge/checkpoints/compact-mnist/onnx --requests 16 --json load.json

1. start ``python -m fm_edge.cli demo`` as a fresh process and time it until ``GET /`` answers 200;
2. fire ``--requests`` requests at once, each from its own client (its own session in the queue), and time
   each from submission to answer; repeat for ``--rounds`` rounds;
3. sample the server's resident memory (RSS, Linux /proc) every 0.1 s: before, peak and after each round.

Needs gradio_client (``pip install 'fm-edge[dev]'``). Prints a summary on stderr and the JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (Linux)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self._done = pid, every, 0.0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(self.every)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def start_demo(args, port: int, log) -> tuple[subprocess.Popen, float]:
    """Start ``fm-edge demo`` and wait for the page: (process, seconds from launch to HTTP 200)."""
    cmd = [
        sys.executable,
        "-m",
        "fm_edge.cli",
        "demo",
        "--port",
        str(port),
        "--queue-size",
        str(args.queue_size),
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.num_threads:
        cmd += ["--num-threads", str(args.num_threads)]
    if args.no_reference:
        cmd += ["--no-reference"]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"fm-edge demo exited with code {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > args.timeout:
            proc.terminate()
            raise SystemExit(f"no page after {args.timeout} s; see {log.name}")
        time.sleep(0.05)


def one_request(url: str, i: int, args, start: threading.Barrier) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False)
    start.wait()
    t0 = time.perf_counter()
    try:
        out = client.predict(
            args.digit,
            args.num_samples,
            args.steps,
            args.solver,
            args.cfg_scale,
            i,
            False,
            api_name="/generate",
        )
        ok, err = out[0] is not None and out[1] is not None, None
    except Exception as exc:
        ok, err = (
            False,
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
        )
    return {"i": i, "ok": ok, "seconds": round(time.perf_counter() - t0, 3), "error": err}


def burst(url: str, pid: int, args) -> dict:
    before = rss_mb(pid)
    mem = MemorySampler(pid)
    mem.start()
    barrier = threading.Barrier(args.requests)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.requests) as pool:
        results = list(pool.map(lambda i: one_request(url, i, args, barrier), range(args.requests)))
    wall = time.perf_counter() - t0
    peak = mem.stop()
    times = sorted(r["seconds"] for r in results if r["ok"])
    return {
        "answered": sum(r["ok"] for r in results),
        "errors": [r["error"] for r in results if not r["ok"]],
        "wall_s": round(wall, 2),
        "latency_s": {
            "min": times[0] if times else None,
            "median": round(statistics.median(times), 3) if times else None,
            "max": times[-1] if times else None,
        },
        "rss_mb": {"before": round(before, 1), "peak": round(peak, 1), "after": round(rss_mb(pid), 1)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="folder with velocity.onnx and velocity_int8.onnx")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="bursts in a row (memory must not grow)")
    p.add_argument("--digit", default="cycle")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--solver", default="euler")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--queue-size", type=int, default=32)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the page")
    p.add_argument("--log", default="demo_load.log", help="the server's output")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)

    port = free_port()
    with open(args.log, "w") as log:
        proc, cold = start_demo(args, port, log)
        url = f"http://127.0.0.1:{port}/"
        print(f"cold start: page served {cold:.2f} s after launch ({url})", file=sys.stderr)
        report = {
            "cold_start_s": round(cold, 2),
            "rss_mb_idle": round(rss_mb(proc.pid), 1),
            "requests": args.requests,
            "request": {
                "digit": args.digit, "num_samples": args.num_samples, "steps": args.steps,
                "solver": args.solver, "cfg_scale": args.cfg_scale,
            },
            "queue_size": args.queue_size,
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "rounds": [],
        }  # fmt: skip
        try:
            for r in range(args.rounds):
                res = burst(url, proc.pid, args)
                report["rounds"].append(res)
                lat = res["latency_s"]
                print(
                    f"round {r + 1}: {res['answered']}/{args.requests} answered in {res['wall_s']} s; "
                    f"latency min {lat['min']} / median {lat['median']} / max {lat['max']} s; "
                    f"RSS {res['rss_mb']['before']} -> peak {res['rss_mb']['peak']} -> {res['rss_mb']['after']} MB",
                    file=sys.stderr,
                )
                for e in res["errors"][:3]:
                    print(f"  error: {e}", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0 if all(r["answered"] == args.requests for r in report["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
