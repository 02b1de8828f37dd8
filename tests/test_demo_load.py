"""fm_edge.demo under load and abuse: 16 concurrent gradio_client requests, well-formed and out-of-range,
against a demo on the tiny ONNX files with a queue of 4.

Every request is answered with images or rejected with one readable line (bad input names the control,
overflow says the queue is full), none hangs, the server answers normally afterwards, and it listens on
127.0.0.1 only. Behaviour, not timings: a gate in front of the fp32 velocity holds the one running request,
so that the queue fills the same way on any machine.
"""

import math
import os
import threading
import time

import pytest

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'fm-edge[demo]'")
pytest.importorskip("gradio_client", reason="needs gradio_client: pip install 'fm-edge[dev]'")

import test_demo  # noqa: E402
from conftest import load_script  # noqa: E402
from test_demo import ARGS, free_port, read_png  # noqa: E402

demo_onnx = test_demo.demo_onnx  # the fixture: the tiny velocity.onnx and its int8 version

QUEUE_SIZE = 4
CLIENTS = 16
TIMEOUT = 120  # s: a request still open after this has hung


#: scripts/demo_load.py as a module: its bad cases, /proc socket listing and raw NaN request
demo_load = load_script("demo_load")
#: (values, the control the message must name): the script's cases JSON can carry (not NaN / infinity)
BAD = [
    (tuple(value if j == index else a for j, a in enumerate(ARGS)), demo_load.FIELDS[index])
    for _, index, value in demo_load.BAD_CASES
    if not (isinstance(value, float) and not math.isfinite(value))
]


class Gate:
    """In front of a velocity callable: while closed, the request being run waits (a slow request)."""

    def __init__(self, velocity):
        self.velocity = velocity
        self.open, self.entered = threading.Event(), threading.Event()
        self.open.set()

    def __call__(self, x, t, y):
        self.entered.set()
        self.open.wait(TIMEOUT)
        return self.velocity(x, t, y)


@pytest.fixture(scope="module")
def served(demo_onnx):
    """The demo with a queue of 4 on the default host, its fp32 velocity gated: (Blocks, url, port, gate)."""
    from fm_edge.demo.app import launch
    from fm_edge.demo.command import build_demo

    demo = build_demo(demo_onnx, reference=False, num_threads=1, queue_size=QUEUE_SIZE)
    fp32 = demo.fm_models.fp32
    gate = fp32.velocity = Gate(fp32.velocity)
    port = free_port()
    _, url, _ = launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield demo, url, port, gate
    gate.open.set()
    demo.close()


@pytest.fixture(scope="module")
def clients(served):
    """One client (one session in the queue) per concurrent request."""
    from gradio_client import Client

    out = [Client(served[1], verbose=False, httpx_kwargs={"timeout": 60}) for _ in range(CLIENTS)]
    yield out
    for c in out:
        c.close()


def submit(client, values):
    return client.submit(*values, api_name="/generate")


def outcome(job) -> tuple[str, str | None]:
    """("answered" | "bad_input" | "queue_full" | "timeout", message) of one job; never waits past TIMEOUT."""
    kind, message, out = demo_load.job_outcome(job, TIMEOUT)
    assert kind != "error", message
    if kind == "answered":
        assert read_png(out[0]).shape == read_png(out[1]).shape and read_png(out[0]).size > 0
    return {"rejected_queue_full": "queue_full", "rejected_bad_input": "bad_input"}.get(kind, kind), message


def wait_for(condition, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"not within {TIMEOUT} s: {what}"
        time.sleep(0.05)


def check(kind: str, field: str | None, result: tuple[str, str | None]):
    """A good request is answered, a bad one rejected naming its control; either may find the queue full."""
    got, msg = result
    assert got != "timeout", f"a {kind} request hung"
    if msg is not None:
        assert "\n" not in msg and "Traceback" not in msg, msg
    if got == "queue_full":
        assert "queue is full" in msg.lower(), msg
    elif kind == "good":
        assert got == "answered", msg
    else:
        assert got == "bad_input" and field in msg, (field, msg)


def test_bad_input_is_refused_at_the_door_and_a_full_queue_at_once(served, clients):
    demo, url, _, gate = served
    gate.open.clear()
    gate.entered.clear()
    try:
        running = submit(clients[0], ARGS)
        assert gate.entered.wait(TIMEOUT), "the first request never started"
        # bad requests are refused when they ask to join, naming the control: no slot, no wait
        bad = [submit(c, v) for c, (v, _) in zip(clients[1:4], BAD[:3])]
        wait_for(lambda: all(j.done() for j in bad), "the bad requests refused while the first still runs")
        for (_, field), job in zip(BAD[:3], bad):
            check("bad", field, outcome(job))
        assert len(demo._queue) == 0
        # good requests fill the queue behind the running one ...
        waiting = [submit(c, (*ARGS[:5], i, False)) for i, c in enumerate(clients[4:8])]
        wait_for(lambda: len(demo._queue) == QUEUE_SIZE, f"{QUEUE_SIZE} requests waiting")
        # ... and eight more at once, good and bad, find it full: told so while the first is still running
        rest = [(ARGS, None) if i % 2 else BAD[3 + i % (len(BAD) - 3)] for i in range(CLIENTS - 8)]
        late = [submit(c, v) for c, (v, _) in zip(clients[8:], rest)]
        wait_for(lambda: all(j.done() for j in late), "every request beyond the queue rejected")
        assert not running.done() and len(demo._queue) == QUEUE_SIZE
    finally:
        gate.open.set()
    check("good", None, outcome(running))
    for job in waiting:
        check("good", None, outcome(job))
    for (_, field), job in zip(rest, late):
        got = outcome(job)
        check("good" if field is None else "bad", field, got)
        assert got[0] == "queue_full"


def test_16_concurrent_mixed_requests_answered_or_rejected_then_still_serving(served, clients):
    demo, url, _, gate = served
    assert gate.open.is_set()
    plan = [(ARGS[:5] + (i, False), None) if i % 3 else BAD[i // 3 % len(BAD)] for i in range(CLIENTS)]
    jobs = [submit(c, v) for c, (v, _) in zip(clients, plan)]
    results = [outcome(j) for j in jobs]
    for (_, field), result in zip(plan, results):
        check("good" if field is None else "bad", field, result)
    assert {r[0] for r in results} <= {"answered", "bad_input", "queue_full"}
    # afterwards the queue is empty again and a normal request is answered
    wait_for(lambda: len(demo._queue) == 0, "an empty queue")
    check("good", None, outcome(submit(clients[0], ARGS)))


def test_nan_sent_as_raw_json_is_rejected_naming_the_field(served):
    _, url, _, _ = served
    values = (*ARGS[:4], float("nan"), *ARGS[5:])  # gradio_client refuses to encode NaN; a raw client can
    got, msg = demo_load.raw_predict(url, demo_load.server_info(url), values, TIMEOUT)
    assert got == "rejected_bad_input" and "CFG scale" in msg and "\n" not in msg, (got, msg)


def test_listens_on_loopback_only_by_default(served):
    _, url, port, _ = served
    assert url.startswith("http://127.0.0.1:")
    ours = [a for a in demo_load.listening(os.getpid()) if a.endswith(f":{port}")]
    assert ours == [f"127.0.0.1:{port}"]
