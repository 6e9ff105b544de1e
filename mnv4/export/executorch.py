"""ExecuTorch export: the shared torch.export program lowered to a delegate (XNNPACK by default; Vulkan,
Core ML or QNN) and written as one .pte file, with a record of which operators the delegate runs and which
stay on portable kernels. int8 is PT2E static quantization with XNNPACK's own quantizer before the same
lowering."""
from __future__ import annotations

import copy
import operator
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import IMAGE_INPUT_NAME, INPUT_NAME, ArtifactFacts, Delegation, Description, Interface, Quantization
from ..artifact.formats import FORMATS, Delegate
from ..artifact.options import DEFAULT_DEPLOYMENT_TARGET, ArtifactOptions
from ..artifact.precisions import FP16, INT8
from ..errors import MissingExtraError
from ..runtimes.executorch import DYNAMIC_BATCH_METHOD, IMAGE_INPUT_METHOD, program_interface
from .program import export_program, mobile_program

CALIBRATION_BATCH = 8  # images per calibration forward
# Operators that XNNPACK fuses into the quantized operator before them (conv + relu) when they sit
# between it and its output's quantize node.
_FUSED_ACTIVATIONS = ("aten.relu.default", "aten.hardtanh.default", "aten.clamp.default")
# ExecuTorch plans a dynamic input's memory for the largest size its range allows, at load time, so
# the shared export's batch range (up to 1024) would reserve over half a GB for a 224px input. The
# bound is 15 because lowering to XNNPACK re-runs torch's float32 convolution shape logic, whose
# backend heuristic guards on batch < 16 and so cuts the range to that side of 16 which the example
# lies on; a 2-image example keeps the small batches, and 15 is then the most float32 can plan for.
PLANNED_MAX_BATCH = 15
DYNAMIC_EXAMPLE_BATCH = 2
# The delegate's Core ML programs run wherever Core ML likes unless told (its CoreMLBackend's own default).
COREML_DELEGATE_COMPUTE_UNITS = "all"
# QNN compiles ahead of time for one Hexagon NPU: Snapdragon 8 Gen 3's (HTP v75), a current flagship.
QNN_SOC = "SM8650"
FLOAT_OPS_RULE = ("operators outside the XNNPACK delegate, and operators inside it whose inputs are not all "
                  "dequantized int8 tensors or whose output is not quantized (a relu fused into its convolution "
                  "counts with it)")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, options: ArtifactOptions,
           calibration: np.ndarray | None = None, description: Description | None = None) -> ArtifactFacts:
    """Write `model` as a .pte at `path`, lowered to the options' delegate (default XNNPACK), with `description` as
    constant methods an app calls (`constant_methods`); returns its facts.
    What follows is XNNPACK's; `_lowering` says how the other delegates differ.

    fp16 runs XNNPACK's float16 kernels (weights and arithmetic in half precision, the only float16
    mode the delegate has) behind a float32 input and output, so callers feed the same tensors as for
    fp32; the two dtype casts at the edges run on ExecuTorch's portable kernels, as XNNPACK's
    partitioner never takes a dtype conversion. With `nhwc` the input is NHWC and a permute inside the
    program (run by XNNPACK) makes it NCHW. With `dynamic_batch` the .pte takes batches of 1 up to
    `max_batch` (the size ExecuTorch planned its input memory for); the runner splits larger ones.

    int8 quantizes the float32 program with XNNPACK's PT2E quantizer (see `_quantized`), calibrated on
    `calibration` (preprocessed NCHW images), and lowers it as float32 is lowered: the input's
    quantization and the output's dequantization run inside the delegate, so the .pte still takes and
    gives float32.
    """
    try:
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise MissingExtraError("ExecuTorch export", "executorch") from None

    delegate = FORMATS["executorch"].delegate_of(options.delegate)
    precision = options.precision_row
    partitioner, program_dtype, details = _lowering(delegate, options)
    module = _Deployable(model, program_dtype, options.nhwc).eval()
    sample = example[:DYNAMIC_EXAMPLE_BATCH] if options.dynamic_batch else example
    if options.nhwc:
        sample = sample.permute(0, 2, 3, 1).contiguous()
    if precision is INT8:
        module = _quantized(module, calibration, options.nhwc)
    edge = to_edge_transform_and_lower(mobile_program(module, sample, options.dynamic_batch),
                                       transform_passes=[_reshapes_as_static_views], partitioner=[partitioner],
                                       constant_methods=constant_methods(options, description))
    lowered = edge.exported_program()
    # Read before to_executorch, which rewrites the graph in place into out-variants and allocations.
    delegation = _delegation(lowered.graph_module, delegate)
    quantization = _quantization(lowered.graph_module, len(calibration)) if precision is INT8 else None
    (placeholder,) = lowered.graph_signature.user_inputs
    max_batch = _planned_max_batch(lowered, placeholder) if options.dynamic_batch else None
    path.write_bytes(edge.to_executorch().buffer)
    input_shape = [-1 if options.dynamic_batch else sample.shape[0], *sample.shape[1:]]
    details.update(method="forward", backend=delegate.backend,
                   structure_check=_structure_check(path, input_shape, max_batch),
                   **({"max_batch": max_batch} if max_batch else {}))
    return ArtifactFacts(
        Interface(IMAGE_INPUT_NAME if options.image_input else INPUT_NAME, "NHWC" if options.channels_last else "NCHW",
                  input_shape, "float32", None, "float32", input_kind="image" if options.image_input else "tensor"),
        precision.weights_dtype, "float16" if precision is FP16 else precision.compute_dtype,
        {"torch": torch.__version__, "executorch": metadata.version("executorch")}, quantization, delegation, details)


def constant_methods(options: ArtifactOptions, description: Description | None) -> dict:
    """Methods an app calls on the loaded program (`module.execute("mean")` in Java, Kotlin or C++) for what to feed
    it, beside `forward`: the input's name, kind (tensor or image), layout, resolution, mean and std (which an image
    input applies itself), and the class names where they are known; and whether the batch is dynamic, which the
    runner reads."""
    methods = {DYNAMIC_BATCH_METHOD: options.dynamic_batch, IMAGE_INPUT_METHOD: options.image_input}
    if description is None:
        return methods
    preprocessing = description.preprocessing_record("NHWC" if options.channels_last else "NCHW")
    methods.update(input_name=description.input_name, input_layout=preprocessing["layout"],
                   resolution=preprocessing["resolution"], mean=list(preprocessing["mean"]),
                   std=list(preprocessing["std"]), pixel_scale=preprocessing["scale"], variant=description.variant)
    if description.labels:
        methods["labels"] = list(description.labels)
    return methods


def _planned_max_batch(lowered, input_name: str) -> int:
    """The largest batch the program's memory is planned for, its symbolic batch capped at PLANNED_MAX_BATCH."""
    from executorch.exir.sym_util import eval_upper_bound

    batch_size = next(node for node in lowered.graph.nodes if node.name == input_name).meta["val"].shape[0]
    _bound(batch_size, PLANNED_MAX_BATCH)
    return eval_upper_bound(batch_size)


def _quantization(graph_module: torch.fx.GraphModule, images: int) -> Quantization:
    quantized, float_ops = _arithmetic(graph_module)
    activations = f"int8 per tensor, asymmetric, HistogramObserver over {images} images"
    weights = "int8 per output channel, symmetric ([-127, 127])"
    return Quantization(
        recipe=(f"ExecuTorch XNNPACKQuantizer PT2E static (get_symmetric_quantization_config, per-channel), "
                f"weights {weights}, activations {activations}, lowered to XNNPACK"),
        tool=(f"executorch {metadata.version('executorch')} XNNPACKQuantizer, torchao "
              f"{metadata.version('torchao')} prepare_pt2e/convert_pt2e"),
        weights=weights, activations=activations, calibration={"images": images, "method": "HistogramObserver"},
        quantized_op_types=dict(quantized), float_ops=dict(float_ops), float_ops_rule=FLOAT_OPS_RULE)


def _lowering(delegate: Delegate, options: ArtifactOptions) -> tuple[object, torch.dtype, dict]:
    """The partitioner that lowers to `delegate`, the dtype the program computes in when it reaches it, and
    the delegate's settings for the manifest.

    XNNPACK and Vulkan run the program's own dtype: fp16 is the model in float16 behind float32 casts (Vulkan
    takes the casts too). Core ML and QNN take a float32 program and compute fp16 in their own float16 mode:
    Core ML's compute precision (with the compute units and deployment target baked into the delegate, where
    an .mlpackage leaves compute units to load time), the QNN HTP's fp16."""
    own_dtype = torch.float16 if options.precision_row is FP16 else torch.float32
    try:
        if delegate.name == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            return XnnpackPartitioner(), own_dtype, {}
        if delegate.name == "vulkan":
            from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

            return VulkanPartitioner(), own_dtype, {}
        if delegate.name == "coreml":
            return _coreml_partitioner(options)
        from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
        from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
        from executorch.backends.qualcomm.utils.utils import generate_htp_compiler_spec, generate_qnn_executorch_compiler_spec

        specs = generate_qnn_executorch_compiler_spec(soc_model=QcomChipset[QNN_SOC],
                                                      backend_options=generate_htp_compiler_spec(use_fp16=True))
        return QnnPartitioner(specs), torch.float32, {"qnn_soc": QNN_SOC}
    except ImportError:
        raise MissingExtraError(f"ExecuTorch's {delegate.label} delegate", "executorch") from None


def _coreml_partitioner(options: ArtifactOptions) -> tuple[object, torch.dtype, dict]:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    units = options.compute_units or COREML_DELEGATE_COMPUTE_UNITS
    target = options.minimum_deployment_target or DEFAULT_DEPLOYMENT_TARGET
    specs = CoreMLBackend.generate_compile_specs(
        compute_unit=ct.ComputeUnit[units.upper()], minimum_deployment_target=getattr(ct.target, target),
        compute_precision=ct.precision.FLOAT16 if options.precision_row is FP16 else ct.precision.FLOAT32)
    return (CoreMLPartitioner(compile_specs=specs), torch.float32,
            {"compute_units": units, "minimum_deployment_target": target})


def _structure_check(path: Path, input_shape: list[int], max_batch: int | None) -> dict:
    """What the ExecuTorch runtime says of the written program without running it (which a program whose
    delegate this runtime lacks cannot do): its methods, and forward's input and output shapes, which must
    be the ones exported (a dynamic batch shows as the largest batch, the one memory is planned for)."""
    interface = program_interface(path)
    expected = [max_batch or input_shape[0], *input_shape[1:]]
    if "forward" not in interface["methods"] or interface["inputs"] != [expected] or len(interface["outputs"]) != 1:
        raise RuntimeError(f"the written .pte is not the program exported: executorch.runtime reads {interface}, "
                           f"expected a forward method taking {expected} and giving one output")
    return {"status": "loads in executorch.runtime with the exported interface (not run)", **interface}


def _quantized(module: torch.nn.Module, calibration: np.ndarray, nhwc: bool) -> torch.nn.Module:
    """`module` quantized for XNNPACK: torch.export, prepare_pt2e with XNNPACKQuantizer's symmetric
    per-channel config (int8 weights per output channel, int8 activations per tensor observed by
    histograms), one forward per calibration batch, convert_pt2e. The result is the reference model of
    the int8 .pte (quantize/dequantize nodes around float operators) as a module torch.export takes."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise MissingExtraError("ExecuTorch int8 export", "executorch") from None

    images = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
    if nhwc:
        images = images.permute(0, 2, 3, 1).contiguous()
    # Prepared with a free batch axis whatever the artifact's batch, so that calibration runs several
    # images per forward (the observers' cost is per call); the .pte's own export fixes the batch later.
    example = images[torch.arange(2) % len(images)]
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(export_program(module, example, dynamic_batch=True).module(), quantizer)
    with torch.no_grad():
        for start in range(0, len(images), CALIBRATION_BATCH):
            prepared(images[start:start + CALIBRATION_BATCH])
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # an exported graph module refuses eval() otherwise
    return _Quantized(converted)


class _Quantized(torch.nn.Module):
    """A converted PT2E graph inside a plain module, so that export_program's model.eval() reaches it as
    a child (whose eval() returns None rather than the module)."""

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__()
        self.graph_module = graph_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


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


def _delegation(graph_module: torch.fx.GraphModule, delegate: Delegate) -> Delegation:
    """How many operators `delegate` runs, of how many, in how many delegate calls (one per delegated
    subgraph), and which operators it does not run (by name, with counts). Tuple unpacking of a delegate's
    outputs is not an operator: executorch.devtools' get_delegation_info counts the same nodes but with the
    unpacking as one, which reads as one operator left outside a fully delegated program."""
    call_delegate = torch.ops.higher_order.executorch_call_delegate
    calls = [node for node in graph_module.graph.nodes if node.target is call_delegate]
    delegated = sum(
        node.op == "call_function" and node.target is not operator.getitem
        for call in calls
        for node in getattr(graph_module, call.args[0].target).original_module.graph.nodes
    )
    outside = Counter(
        _operator_name(node.target) for node in graph_module.graph.nodes
        if node.op == "call_function" and node.target not in (call_delegate, operator.getitem)
    )
    return Delegation(delegate.name, delegated, delegated + sum(outside.values()), dict(sorted(outside.items())),
                      len(calls))


def _arithmetic(graph_module: torch.fx.GraphModule) -> tuple[Counter, Counter]:
    """(int8, float) operator counts of a lowered quantized program, by operator name. Inside each XNNPACK
    delegate an operator computes in int8 when each activation input comes from a dequantize node and
    its output goes only to quantize nodes (directly, or through a relu that XNNPACK fuses into it);
    constants (weights, biases) do not count as inputs. Every operator outside the delegates is float,
    except quantize and dequantize nodes, which are conversions."""
    delegate = torch.ops.higher_order.executorch_call_delegate
    quantized, floating = Counter(), Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if node.target is not delegate:
            name = _operator_name(node.target)
            if not _is_conversion(name):
                floating[name] += 1
            continue
        program = getattr(graph_module, node.args[0].target).original_module
        activations = set(program.graph_signature.user_inputs)
        for inner in program.graph.nodes:
            if inner.op != "call_function" or inner.target is operator.getitem:
                continue
            name = _operator_name(inner.target)
            if _is_conversion(name):
                continue
            (quantized if _computes_in_int8(inner, name, activations) else floating)[name] += 1
    return quantized, floating


def _is_conversion(name: str) -> bool:
    return _is_quantize(name) or _is_dequantize(name)


def _is_quantize(name: str) -> bool:
    return name.startswith("quantized_decomposed.quantize_per")


def _is_dequantize(name: str) -> bool:
    return name.startswith("quantized_decomposed.dequantize_per")


def _computes_in_int8(node: torch.fx.Node, name: str, activations: set[str]) -> bool:
    """Whether `node` (inside a delegate) reads only dequantized int8 tensors and constants and writes only
    tensors that are quantized again, possibly through a relu fused into it; or is such a fused relu."""
    def name_of(other: torch.fx.Node) -> str:
        return _operator_name(other.target) if other.op == "call_function" else ""

    inputs = node.all_input_nodes
    if name in _FUSED_ACTIVATIONS and len(inputs) == 1 and len(inputs[0].users) == 1 \
            and name_of(inputs[0]) and _computes_in_int8(inputs[0], name_of(inputs[0]), activations):
        return True

    def dequantized(source: torch.fx.Node) -> bool:
        if source.op == "placeholder":
            return source.name not in activations  # a constant: weight or bias
        return _is_dequantize(name_of(source))

    def quantized(user: torch.fx.Node) -> bool:
        if _is_quantize(name_of(user)):
            return True
        return name_of(user) in _FUSED_ACTIVATIONS and len(node.users) == 1 and bool(user.users) \
            and all(_is_quantize(name_of(after)) for after in user.users)

    return bool(node.users) and all(map(dequantized, inputs)) and all(map(quantized, node.users))


def _operator_name(target) -> str:
    """`aten.view_copy.default` and the like; Python's own functions (on sizes) by their name."""
    op = getattr(target, "_op", target)  # an edge operator wraps its ATen one
    return str(op) if isinstance(op, torch._ops.OpOverload) else op.__name__
