"""Cold start, load and abuse test of ``fm-edge demo``: how long until the page is served, and what N
concurrent ``gradio_client`` requests get, well-formed or not (answers, rejections, times, server memory).

    python scripts/demo_load.py --model fm_edge/checkpoints/teacher-mnist-digit-t/onnx --requests 16 64 \
        --bad-fraction 0.3 --queue-size 32 4 --json docs/results/demo_load.json

1. start ``python -m fm_edge.cli demo`` as a fresh process (one per ``--queue-size``), time it until ``GET /``
   answers 200, and read which addresses it listens on (Linux /proc: 127.0.0.1 unless ``--host``);
2. fire ``--requests`` requests at once, each from its own client (its own session in the queue); a share
   ``--bad-fraction`` of them send out-of-range or wrongly typed values (``BAD_CASES``; NaN and infinity go
   as raw JSON, which gradio_client refuses to encode). Each request is timed from submission to its end
   and ends as one of ``OUTCOMES``: a request still open after ``--request-timeout`` is a "timeout";
3. after each burst, one normal request must still be answered; ``--rounds`` bursts per client count;
4. sample the server's resident memory (RSS) every 0.1 s: before, peak and after each burst.

A round is clean when every request was answered or rejected with a one-line message (bad input naming its
field, overflow saying the queue is full), nothing timed out, no bad request was answered and no good one
rejected, and the server answered afterwards. Latency percentiles are nearest-rank.

Needs gradio_client (``pip install 'fm-edge[dev]'``). Prints a summary on stderr and the JSON on stdout;
exits 1 unless every round is clean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUTCOMES = ("answered", "rejected_bad_input", "rejected_queue_full", "error", "timeout")
#: the controls in the order of the ``generate`` API, and how the server's messages name them
FIELDS = ("digit", "number of samples", "ODE steps", "solver", "CFG scale", "seed", "randomize")
#: (name, index of the control, value sent): one control broken, the others as in a good request
BAD_CASES = [
    ("digit 11", 0, "11"),
    ("digit -1", 0, -1),
    ("samples 0", 1, 0),
    ("samples 10^9", 1, 10**9),
    ("samples 10^400 (beyond float)", 1, 10**400),
    ("samples 'many'", 1, "many"),
    ("samples null", 1, None),
    ("steps 0", 2, 0),
    ("steps 10^6", 2, 10**6),
    ("steps 2.5", 2, 2.5),
    ("solver 5", 3, 5),
    ("solver ['euler']", 3, ["euler"]),
    ("cfg NaN", 4, float("nan")),
    ("cfg inf", 4, float("inf")),
    ("cfg 1e9", 4, 1e9),
    ("cfg 'abc'", 4, "abc"),
    ("seed -1", 5, -1),
    ("seed 'abc'", 5, "abc"),
    ("randomize 'yes'", 6, "yes"),
]


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


def listening(pid: int) -> list[str]:
    """The TCP addresses ("ip:port") a process listens on (Linux: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = socket.inet_ntop(family, raw)
            out.append(
                f"[{ip}]:{int(hex_port, 16)}" if family == socket.AF_INET6 else f"{ip}:{int(hex_port, 16)}"
            )
    return sorted(out)


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def reachable(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=2):
            return True
    except OSError:
        return False


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


def start_demo(args, queue_size: int, port: int, log) -> tuple[subprocess.Popen, float]:
    """Start ``fm-edge demo`` and wait for the page: (process, seconds from launch to HTTP 200)."""
    cmd = [
        sys.executable,
        "-m",
        "fm_edge.cli",
        "demo",
        "--port",
        str(port),
        "--queue-size",
        str(queue_size),
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.host:
        cmd += ["--host", args.host]
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


def good_args(args, seed: int) -> tuple:
    return (args.digit, args.num_samples, args.steps, args.solver, args.cfg_scale, seed, False)


def plan(n: int, bad_fraction: float, first: int = 0) -> list[int | None]:
    """Per client, the index of its BAD_CASES entry, or None for a good client: the bad ones spread evenly,
    cycling through the cases from ``first`` (so that the next round sends the next cases)."""
    out, k = [], first
    for i in range(n):
        bad = math.floor((i + 1) * bad_fraction) > math.floor(i * bad_fraction)
        out.append(k % len(BAD_CASES) if bad else None)
        k += bad
    return out


def request_args(args, case: int | None, seed: int) -> tuple:
    values = list(good_args(args, seed))
    if case is not None:
        _, index, value = BAD_CASES[case]
        values[index] = value
    return tuple(values)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def validation_message(rejection) -> str:
    """The queue validator's refusal as one line, "param: message; ...": from gradio_client's
    ValidationError text ("N parameter(s) failed validation:\n- param: message ...") or from the raw 422
    body's detail list."""
    if isinstance(rejection, list):
        return "; ".join(
            f"{d.get('parameter_name')}: {d.get('message')}" for d in rejection if not d.get("is_valid")
        )
    return "; ".join(
        line.strip()[2:] for line in str(rejection).splitlines()[1:] if line.strip().startswith("- ")
    )


def classify_error(message: str) -> str:
    return "rejected_queue_full" if "queue is full" in message.lower() else "rejected_bad_input"


def server_info(url: str) -> tuple[int, str]:
    """(fn_index of /generate, api prefix) from the page's config, for raw requests."""
    with urllib.request.urlopen(url + "config", timeout=30) as r:
        config = json.load(r)
    deps = config["dependencies"]
    fn = next(d.get("id", i) for i, d in enumerate(deps) if d.get("api_name") == "generate")
    return fn, config.get("api_prefix", "/gradio_api").strip("/") + "/"


def raw_predict(url: str, info: tuple[int, str], values: tuple, timeout: float) -> tuple[str, str | None]:
    """The queue protocol by hand, for values JSON cannot carry strictly (NaN, infinity): (outcome, message).

    The body is Python's JSON with the bare ``NaN`` / ``Infinity`` literals, which the server's parser reads.
    """
    import httpx

    fn_index, prefix = info
    session = uuid.uuid4().hex
    body = {"data": list(values), "fn_index": fn_index, "session_hash": session, "event_data": None}
    deadline = time.monotonic() + timeout
    try:
        return _raw_events(url + prefix, body, deadline, min(timeout, 60))
    except httpx.TimeoutException:
        return "timeout", None


def _raw_events(api: str, body: dict, deadline: float, io_timeout: float) -> tuple[str, str | None]:
    import httpx

    with httpx.Client(timeout=io_timeout) as http:
        r = http.post(
            api + "queue/join",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        if r.status_code == 503:
            return "rejected_queue_full", str(r.json().get("detail"))
        if r.status_code == 422:  # refused by the validator before joining the queue
            return "rejected_bad_input", validation_message(r.json().get("detail") or [])
        if r.status_code != 200:
            return "error", f"HTTP {r.status_code}: {r.text.strip()[:200]}"
        with http.stream("GET", api + "queue/data", params={"session_hash": body["session_hash"]}) as s:
            for line in s.iter_lines():  # heartbeats at least every 15 s, so the deadline is checked
                if time.monotonic() > deadline:
                    return "timeout", None
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") != "process_completed":
                    continue
                output = msg.get("output") or {}
                if output.get("error") is not None:
                    return classify_error(str(output["error"])), str(output["error"])
                data = output.get("data") or []
                ok = len(data) >= 2 and data[0] is not None and data[1] is not None
                return ("answered", None) if ok else ("error", "answer without the two grids")
    return "error", "the event stream ended without an answer"


def job_outcome(job, timeout: float) -> tuple[str, str | None, tuple | None]:
    """(outcome, message, outputs) of one submitted gradio_client job, never waiting past ``timeout``."""
    from gradio_client.exceptions import AppError, ValidationError
    from gradio_client.utils import QueueError

    try:
        out = job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()
        return "timeout", None, None
    except QueueError as exc:
        return "rejected_queue_full", str(exc), None
    except ValidationError as exc:  # refused by the validator before joining the queue
        if not str(exc).startswith("1 parameter(s) failed validation"):
            return "error", first_line(exc), None
        return "rejected_bad_input", validation_message(exc), None
    except AppError as exc:
        return classify_error(str(exc)), str(exc), None
    except Exception as exc:
        return "error", first_line(exc), None
    ok = out[0] is not None and out[1] is not None and all(Path(p).is_file() for p in out[:2])
    return ("answered", None, out) if ok else ("error", "answer without the two grids", out)


def client_predict(client, values: tuple, timeout: float) -> tuple[str, str | None]:
    """One request through gradio_client, never waiting past ``timeout``: (outcome, message)."""
    outcome, message, _ = job_outcome(client.submit(*values, api_name="/generate"), timeout)
    return outcome, message


def one_request(url: str, info, i: int, case: int | None, args, start: threading.Barrier) -> dict:
    from gradio_client import Client

    values = request_args(args, case, seed=i)
    raw = any(isinstance(v, float) and not math.isfinite(v) for v in values)
    client, outcome, message = None, None, None
    try:  # gradio_client's HTTP calls time out after 5 s by default: too short for a queue join under load
        client = None if raw else Client(url, verbose=False, httpx_kwargs={"timeout": 60})
    except Exception as exc:
        outcome, message = "error", f"client: {first_line(exc)}"
    start.wait()
    t0 = time.perf_counter()
    try:
        if outcome is not None:
            pass
        elif raw:
            outcome, message = raw_predict(url, info, values, args.request_timeout)
        else:
            outcome, message = client_predict(client, values, args.request_timeout)
    except Exception as exc:  # the raw path's connection errors
        outcome, message = "error", first_line(exc)
    finally:
        if client is not None:
            client.close()
    rec = {
        "i": i,
        "kind": "good" if case is None else "bad",
        "case": None if case is None else BAD_CASES[case][0],
        "outcome": outcome,
        "seconds": round(time.perf_counter() - t0, 3),
        "message": message[:300] if message else None,
    }
    if outcome == "rejected_bad_input" and case is not None:
        rec["names_field"] = FIELDS[BAD_CASES[case][1]] in message
    return rec


def percentiles(times: list[float]) -> dict:
    """Nearest-rank p50 / p95 and the max of a list of seconds (Nones when empty)."""
    xs = sorted(times)

    def rank(p):
        return xs[max(math.ceil(p / 100 * len(xs)) - 1, 0)] if xs else None

    return {"n": len(xs), "p50": rank(50), "p95": rank(95), "max": xs[-1] if xs else None}


def check_after(url: str, args) -> dict:
    """One normal request after the burst: is the server still answering?"""
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 60})
        outcome, message = client_predict(client, good_args(args, 0), args.request_timeout)
        client.close()
    except Exception as exc:
        outcome, message = "error", first_line(exc)
    return {"outcome": outcome, "message": message, "seconds": round(time.perf_counter() - t0, 3)}


def burst(url: str, info, pid: int, n: int, args, round_index: int = 0) -> dict:
    before = rss_mb(pid)
    mem = MemorySampler(pid)
    mem.start()
    who = plan(n, args.bad_fraction, first=round_index * math.floor(n * args.bad_fraction))
    barrier = threading.Barrier(n)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: one_request(url, info, i, who[i], args, barrier), range(n)))
    wall = time.perf_counter() - t0
    peak = mem.stop()
    after_rss = rss_mb(pid)
    after = check_after(url, args)
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    by_kind = {
        k: {o: sum(r["outcome"] == o for r in results if r["kind"] == k) for o in OUTCOMES}
        for k in ("good", "bad")
    }
    messages = [r["message"] for r in results if r["message"]]
    problems = {
        "bad_answered": [r["case"] for r in results if r["kind"] == "bad" and r["outcome"] == "answered"],
        "good_rejected_as_bad_input": [
            r["message"] for r in results if r["kind"] == "good" and r["outcome"] == "rejected_bad_input"
        ],
        "message_without_field": [r["message"] for r in results if r.get("names_field") is False],
        "multi_line_messages": [m for m in messages if "\n" in m],
        "errors": [r["message"] for r in results if r["outcome"] == "error"],
    }
    clean = (
        counts["timeout"] == 0
        and not any(problems.values())
        and after["outcome"] == "answered"
        and counts["answered"] + counts["rejected_bad_input"] + counts["rejected_queue_full"] == n
    )
    return {
        "clients": n,
        "bad_clients": sum(c is not None for c in who),
        "clean": clean,
        "outcomes": counts,
        "outcomes_by_kind": by_kind,
        "wall_s": round(wall, 2),
        "latency_s": {
            o: percentiles([r["seconds"] for r in results if r["outcome"] == o])
            for o in ("answered", "rejected_bad_input", "rejected_queue_full")
        },
        "rss_mb": {
            "before": round(before, 1),
            "peak": round(max(peak, after_rss), 1),
            "after": round(after_rss, 1),
        },
        "normal_request_after": after,
        "problems": problems,
        "sample_messages": {
            o: sorted({r["message"] for r in results if r["outcome"] == o})[:5]
            for o in ("rejected_bad_input", "rejected_queue_full")
        },
        "requests": results,
    }


def serve_and_load(args, queue_size: int) -> dict:
    """One fresh server with this queue size: cold start, bound addresses, then every burst."""
    port = free_port()
    log_path = Path(args.log)
    if len(args.queue_size) > 1:
        log_path = log_path.with_name(f"{log_path.stem}.q{queue_size}{log_path.suffix}")
    with open(log_path, "w") as log:
        proc, cold = start_demo(args, queue_size, port, log)
        url = f"http://127.0.0.1:{port}/"
        bound = listening(proc.pid)
        outside = outside_address()
        print(f"queue size {queue_size}: page served {cold:.2f} s after launch; listening on {bound}",
              file=sys.stderr)  # fmt: skip
        report = {
            "queue_size": queue_size,
            "cold_start_s": round(cold, 2),
            "rss_mb_idle": round(rss_mb(proc.pid), 1),
            "listening": bound,
            "loopback_only": bool(bound) and all(a.startswith(("127.", "[::1]")) for a in bound),
            "outside_address": outside,
            "reachable_from_outside_address": reachable(outside, port) if outside else None,
            "loadavg_at_start": os.getloadavg(),
            "rounds": [],
        }
        try:
            info = server_info(url)
            for n in args.requests:
                for r in range(args.rounds):
                    res = burst(url, info, proc.pid, n, args, r)
                    res["round"] = r + 1
                    report["rounds"].append(res)
                    c, lat, mem = res["outcomes"], res["latency_s"]["answered"], res["rss_mb"]
                    print(
                        f"  {n} clients ({res['bad_clients']} bad), round {r + 1}: {c['answered']} answered, "
                        f"{c['rejected_bad_input']} bad input, {c['rejected_queue_full']} queue full, "
                        f"{c['error']} errors, {c['timeout']} timeouts in {res['wall_s']} s; answered p50 "
                        f"{lat['p50']} / p95 {lat['p95']} / max {lat['max']} s; RSS {mem['before']} -> peak "
                        f"{mem['peak']} -> {mem['after']} MB; after: {res['normal_request_after']['outcome']}"
                        f"{'' if res['clean'] else '  NOT CLEAN'}",
                        file=sys.stderr,
                    )
                    for key, items in res["problems"].items():
                        for item in items[:3]:
                            print(f"    {key}: {item}", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="folder with velocity.onnx and velocity_int8.onnx")
    p.add_argument("--requests", type=int, nargs="+", default=[16], help="concurrent clients per burst")
    p.add_argument("--bad-fraction", type=float, default=0.0, help="share of clients sending bad values")
    p.add_argument("--rounds", type=int, default=2, help="bursts in a row (memory must not grow)")
    p.add_argument("--digit", default="cycle")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--solver", default="euler")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--queue-size", type=int, nargs="+", default=[32], help="one fresh server for each")
    p.add_argument("--host", default=None, help="passed to fm-edge demo (default: its own, 127.0.0.1)")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the page")
    p.add_argument("--request-timeout", type=float, default=600, help="a request open longer has hung")
    p.add_argument("--log", default="demo_load.log", help="the server's output")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if not 0.0 <= args.bad_fraction <= 1.0:
        p.error("--bad-fraction must be from 0 to 1")

    report = {
        "request": {
            "digit": args.digit, "num_samples": args.num_samples, "steps": args.steps,
            "solver": args.solver, "cfg_scale": args.cfg_scale,
        },
        "bad_fraction": args.bad_fraction,
        "bad_cases": [name for name, _, _ in BAD_CASES],
        "request_timeout_s": args.request_timeout,
        "reference": not args.no_reference,
        "cpu_count": os.cpu_count(),
        "servers": [serve_and_load(args, q) for q in args.queue_size],
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0 if all(r["clean"] for s in report["servers"] for r in s["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
