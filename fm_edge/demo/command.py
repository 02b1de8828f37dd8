"""``fm-edge demo`` and :func:`build_demo`; gradio is imported only when the demo is built."""

from __future__ import annotations


def build_demo(model_dir=None, **kwargs):
    """The queued ``gr.Blocks`` over ``model_dir/velocity.onnx`` and ``velocity_int8.onnx``; see
    :func:`fm_edge.demo.app.build_demo`."""
    from fm_edge.demo.app import build_demo as build

    return build(model_dir, **kwargs)


def main(args):
    """``fm-edge demo``: build the page and serve it until interrupted."""
    from fm_edge.backends import check_device
    from fm_edge.demo.app import build_demo as build
    from fm_edge.demo.app import launch
    from fm_edge.errors import UsageError

    if not 0 <= args.port <= 65535:  # checked before the models load
        raise UsageError(f"--port {args.port} is out of range: use 1-65535 (0 picks a free port)")
    device = check_device(getattr(args, "device", "auto"))
    demo = build(
        args.model,
        checkpoint=getattr(args, "checkpoint", None),
        reference=False if getattr(args, "no_reference", False) else None,
        num_threads=args.num_threads,
        queue_size=getattr(args, "queue_size", 32),
        device=device,
        student=False if getattr(args, "no_student", False) else getattr(args, "student", None),
    )
    launch(demo, host=args.host, port=args.port)
    return None
