"""CUDA graphs for a step that repeats with the same shapes: propagation's steady state.

Once a direction's memory bank is full, every tracking step has the same input shapes. Issuing
its few hundred small kernels one by one costs more host time than the GPU spends on them;
replaying a captured CUDA graph issues them all at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

TensorFn = Callable[..., tuple[torch.Tensor, ...]]


@dataclass
class _Graph:
    """A captured graph with the static buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: tuple[torch.Tensor, ...]

    def replay(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, tensor in zip(self.inputs, tensors, strict=True):
            static.copy_(tensor)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


def _no_autocast_cache() -> torch.autocast:
    """The current CUDA autocast setting with its weight cache off.

    Casts cached outside a graph are freed when the autocast region ends, while the graph
    would still read them.
    """
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                          enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)


def _capture(fn: TensorFn, tensors: Sequence[torch.Tensor]) -> _Graph:
    inputs = [t.clone() for t in tensors]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: lazy initialisation and library autotuning happen here
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*inputs)
    return _Graph(graph, inputs, outputs)


class GraphCache:
    """Runs ``fn(*tensors) -> tuple of tensors`` through CUDA graphs, one per signature.

    The signature is the caller's ``key`` (whatever ``fn`` depends on besides the tensors),
    the tensors' shapes and dtypes, and the autocast setting. A signature is captured the
    ``capture_after``-th time it is seen within one run (``new_run`` starts the count again;
    graphs are kept), so shapes that occur once per run (a bank still filling) always run
    eagerly and cost no capture. Outputs are clones, valid after later replays.
    """

    def __init__(self, capture_after: int = 2) -> None:
        self.capture_after = capture_after
        self.sightings: Counter[Hashable] = Counter()
        self.graphs: dict[Hashable, _Graph] = {}
        self.replays = 0

    def new_run(self) -> None:
        """Start counting sightings again (e.g. at each propagation)."""
        self.sightings.clear()

    def run(self, fn: TensorFn, key: Hashable, tensors: Sequence[torch.Tensor]
            ) -> tuple[torch.Tensor, ...]:
        """``fn(*tensors)``, replayed from a graph when this signature has one."""
        signature = (key, tuple((tuple(t.shape), t.dtype) for t in tensors),
                     torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        graph = self.graphs.get(signature)
        if graph is None:
            self.sightings[signature] += 1
            if self.sightings[signature] < self.capture_after:
                return fn(*tensors)
            with _no_autocast_cache():
                graph = self.graphs[signature] = _capture(fn, tensors)
        self.replays += 1
        return graph.replay(tensors)
