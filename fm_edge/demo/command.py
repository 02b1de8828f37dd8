"""``fm-edge demo`` and :func:`build_demo`; gradio is imported only when the demo is built."""

from __future__ import annotations


def build_demo(model_dir=None, **kwargs):
    """The queued ``gr.Blocks`` over ``model_dir/velocity.onnx`` and ``velocity_int8.onnx``; see
    :func:`fm_edge.demo.app.build_demo`."""
    from fm_edge.demo.app import build_demo as build

    return build(model_dir, **kwargs)


def add_arguments(p) -> None:
    """``fm-edge demo``'s flags."""
    from fm_edge.flags import device_flag

    p.add_argument(
        "--model", default=None, help="folder with velocity.onnx and velocity_int8.onnx (default: shipped)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (0: any free port)")
    p.add_argument(
        "--checkpoint", default=None, help="PyTorch checkpoint for the reference column (needs torch)"
    )
    p.add_argument("--no-reference", action="store_true", help="no PyTorch fp32 column, even with torch")
    p.add_argument(
        "--student",
        default=None,
        help="export folder of a distilled student for a one-step column (default: the shipped "
        "student, with the shipped teacher)",
    )
    p.add_argument("--no-student", action="store_true", help="no one-step student column")
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait (more: 'queue full')")
    device_flag(p, "where the models run (ONNX: CUDA provider with onnxruntime-gpu)")
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads (torch and ONNX Runtime)")


def main(args):
    """``fm-edge demo``: build the page and serve it until interrupted."""
    from fm_edge.demo.app import build_demo as build
    from fm_edge.demo.app import launch
    from fm_edge.errors import UsageError

    if not 0 <= args.port <= 65535:  # checked before the models load
        raise UsageError(f"--port {args.port} is out of range: use 1-65535 (0 picks a free port)")
    demo = build(
        args.model,
        checkpoint=args.checkpoint,
        reference=False if args.no_reference else None,
        num_threads=args.num_threads,
        queue_size=args.queue_size,
        device=args.device,
        student=False if args.no_student else args.student,
    )
    launch(demo, host=args.host, port=args.port)
    return None
