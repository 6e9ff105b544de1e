"""ExecuTorch export: the shared torch.export program lowered to the XNNPACK delegate and written as
one .pte file, with a record of which operators XNNPACK runs and which stay on portable kernels."""
from __future__ import annotations

import copy
import operator
from collections import Counter
from importlib import metadata
from pathlib import Path

import torch

from ..artifact.formats import FORMATS
from ..errors import MissingExtraError
from ..runtimes.executorch import DYNAMIC_BATCH_METHOD
from .program import mobile_program

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# ExecuTorch plans a dynamic input's memory for the largest size its range allows, at load time, so
# the shared export's batch range (up to 1024) would reserve over half a GB for a 224px input. The
# bound is 15 because lowering to XNNPACK re-runs torch's float32 convolution shape logic, whose
# backend heuristic guards on batch < 16 and so cuts the range to that side of 16 which the example
# lies on; a 2-image example keeps the small batches, and 15 is then the most float32 can plan for.
MAX_BATCH = 15
DYNAMIC_EXAMPLE_BATCH = 2


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp32",
           dynamic_batch: bool = False, nhwc: bool = False) -> dict:
    """Write `model` as an XNNPACK-delegated .pte at `path`; returns the facts for the manifest.

    fp16 runs XNNPACK's float16 kernels (weights and arithmetic in half precision, the only float16
    mode the delegate has) behind a float32 input and output, so callers feed the same tensors as for
    fp32; the two dtype casts at the edges run on ExecuTorch's portable kernels, as XNNPACK's
    partitioner never takes a dtype conversion. With `nhwc` the input is NHWC and a permute inside the
    program (run by XNNPACK) makes it NCHW. With `dynamic_batch` the .pte takes batches of 1 up to
    `max_batch` (the size ExecuTorch planned its input memory for); the runner splits larger ones.
    """
    FORMATS["executorch"].check(precision=precision, nhwc=nhwc, dynamic_batch=dynamic_batch)
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.exir.sym_util import eval_upper_bound
    except ImportError:
        raise MissingExtraError("ExecuTorch export", "executorch") from None

    module = _Deployable(model, DTYPES[precision], nhwc).eval()
    sample = example[:DYNAMIC_EXAMPLE_BATCH] if dynamic_batch else example
    if nhwc:
        sample = sample.permute(0, 2, 3, 1).contiguous()
    program = mobile_program(module, sample, dynamic_batch)
    edge = to_edge_transform_and_lower(
        program,
        transform_passes=[_reshapes_as_static_views],
        partitioner=[XnnpackPartitioner()],
        constant_methods={DYNAMIC_BATCH_METHOD: dynamic_batch},
    )
    lowered = edge.exported_program()
    # Read before to_executorch, which rewrites the graph in place into out-variants and allocations.
    delegation = _delegation(lowered.graph_module)
    (input_name,) = lowered.graph_signature.user_inputs
    batch_size = next(node for node in lowered.graph.nodes if node.name == input_name).meta["val"].shape[0]
    if dynamic_batch:
        _bound(batch_size, MAX_BATCH)
    path.write_bytes(edge.to_executorch().buffer)

    dtype = str(DTYPES[precision]).removeprefix("torch.")
    facts = {
        "toolchain": {"torch": torch.__version__, "executorch": metadata.version("executorch")},
        "input_name": input_name,
        "input_layout": "NHWC" if nhwc else "NCHW",
        "input_shape": [-1 if dynamic_batch else sample.shape[0], *sample.shape[1:]],
        "input_dtype": "float32",
        "output_dtype": "float32",
        "method": "forward",
        "backend": "XnnpackBackend",
        "weights_dtype": dtype,
        "compute_dtype": dtype,
        "delegation": delegation,
    }
    if dynamic_batch:
        facts["max_batch"] = eval_upper_bound(batch_size)
    return facts


class _Deployable(torch.nn.Module):
    """The model as the .pte runs it: float32 in and out whatever the compute dtype, and optionally
    an NHWC input that is permuted to the model's NCHW."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, nhwc: bool):
        super().__init__()
        # A copy for float16, so the caller's float32 model is left as it was.
        self.model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        self.dtype = dtype
        self.nhwc = nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cast first: the cast runs outside XNNPACK, and the permute then joins the model's delegate.
        x = x.to(self.dtype)
        if self.nhwc:
            x = x.permute(0, 3, 1, 2).contiguous()
        return self.model(x).float()


def _reshapes_as_static_views(graph_module: torch.fx.GraphModule):
    """Rewrite each view_copy and unsqueeze_copy as a view_copy to its output shape written with
    constants, the symbolic batch (if any) as -1.

    XNNPACK's partitioner rejects a reshape whose sizes are symbolic (a dynamic batch) and unsqueezes
    only along the last axis (attention's (B, L, d) -> (B, 1, L, d)); as plain static views both run
    in the delegate."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    reshapes = (exir_ops.edge.aten.view_copy.default, exir_ops.edge.aten.unsqueeze_copy.default)
    for node in graph_module.graph.nodes:
        if node.target not in reshapes:
            continue
        shape = [size if isinstance(size, int) else -1 for size in node.meta["val"].shape]
        if shape.count(-1) <= 1:
            node.target, node.args, node.kwargs = exir_ops.edge.aten.view_copy.default, (node.args[0], shape), {}
    graph_module.graph.eliminate_dead_code()  # the sym_size reads the old sizes came from
    graph_module.recompile()
    return PassResult(graph_module, True)


def _bound(size: torch.SymInt, largest: int) -> None:
    """Cap a symbolic size at `largest` in the shape environment that memory planning reads (the
    range torch.export declared is fixed by then; a float32 lowering has already cut it to 15)."""
    from torch.utils._sympy.value_ranges import ValueRanges

    ranges = size.node.shape_env.var_to_range
    ranges[size.node.expr] &= ValueRanges(1, largest)


def _delegation(graph_module: torch.fx.GraphModule) -> dict:
    """How many operators XNNPACK runs, in how many delegate calls, and which operators it does not
    run (by name, with counts). Tuple unpacking of a delegate's outputs is not an operator."""
    delegate = torch.ops.higher_order.executorch_call_delegate
    calls = [node for node in graph_module.graph.nodes if node.target is delegate]
    delegated = sum(
        node.op == "call_function" and node.target is not operator.getitem
        for call in calls
        for node in getattr(graph_module, call.args[0].target).original_module.graph.nodes
    )
    outside = Counter(
        _operator_name(node.target) for node in graph_module.graph.nodes
        if node.op == "call_function" and node.target not in (delegate, operator.getitem)
    )
    return {"delegated_ops": delegated, "non_delegated_ops": dict(sorted(outside.items())),
            "delegate_calls": len(calls)}


def _operator_name(target) -> str:
    """`aten.view_copy.default` and the like; Python's own functions (on sizes) by their name."""
    op = getattr(target, "_op", target)  # an edge operator wraps its ATen one
    return str(op) if isinstance(op, torch._ops.OpOverload) else op.__name__
