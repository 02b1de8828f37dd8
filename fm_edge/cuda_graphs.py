"""The few-step sampler captured as one CUDA graph per batch size: on a GPU a small UNet's sampling is bound
by kernel launches (thousands per 4-step CFG call), and a graph replays them all in one launch.

:class:`GraphedSolver` runs :func:`fm_edge.solvers.sample` over static input buffers once on a side stream
(warm-up: cuDNN picks its algorithms, the caching allocator settles), captures it into a ``torch.cuda.CUDAGraph``,
and from then on copies the noise and labels into those buffers and replays. The solve is the same Python
loop, so a graphed solve gives the same digits as an eager one; only the launches differ. One graph is kept
per (batch, steps, solver, CFG scale, shift); the time grid and the guidance scale are constants inside it.
"""

from __future__ import annotations

from collections.abc import Callable


class GraphedSolver:
    """``solve(x, labels, spec) -> x0`` (torch CUDA tensors, a :class:`~fm_edge.sampler_spec.SamplerSpec`),
    graph-replayed."""

    def __init__(self, velocity: Callable, warmup: int = 2):
        self.velocity, self.warmup = velocity, warmup
        self._graphs: dict[tuple, tuple] = {}

    def __call__(self, x, labels, spec):
        key = (tuple(x.shape), x.dtype, spec)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, labels, spec)
        graph, static_x, static_y, static_out = self._graphs[key]
        static_x.copy_(x)
        static_y.copy_(labels)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, x, labels, spec):
        import torch

        from fm_edge.solvers import sample

        args = (spec.steps, spec.solver, spec.cfg_scale, spec.shift)
        static_x, static_y = x.clone(), labels.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                sample(self.velocity, static_x, static_y, *args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_out = sample(self.velocity, static_x, static_y, *args)
        return graph, static_x, static_y, static_out

    def __len__(self) -> int:
        return len(self._graphs)
