"""A Core ML ML-program interpreter: runs a saved .mlpackage on any OS, with PyTorch's CPU kernels.

It reads what Core ML itself would load: the program protobuf (`Data/com.apple.CoreML/model.mlmodel`,
through coremltools' protobuf classes) and its weight file (through coremltools' blob-storage reader),
and executes the `main` function's operations one by one with the semantics of the MIL operation
definitions (coremltools/converters/mil/mil/ops/defs). No macOS API is involved.

Precision follows the program's declared types: every operation reads its float16 inputs widened
exactly to float32, computes in float32, and its result is rounded to the type the program declares for
that output. An fp16 program (coremltools' FLOAT16 compute precision) therefore keeps every intermediate
tensor in float16, as Core ML's GPU and Neural Engine do; within one operation the accumulation is
float32 (PyTorch's CPU float16 convolutions are slow and not what the device runs either).

An operation the interpreter does not implement stops the load with `UnsupportedOperationError`, naming
the operation, its output and its position: nothing is skipped.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DamagedArtifactError, MissingExtraError, MNV4Error, UnsupportedOperationError, one_line

# Where coremltools saves the program and its weights (the root model is found through Manifest.json).
MODEL_FILE = Path("Data/com.apple.CoreML/model.mlmodel")
WEIGHTS_DIR = Path("Data/com.apple.CoreML/weights")
FUNCTION = "main"

# MIL data type name -> torch dtype of the tensors that carry it.
TORCH_DTYPES = {
    "BOOL": torch.bool, "FLOAT16": torch.float16, "FLOAT32": torch.float32, "FLOAT64": torch.float64,
    "INT8": torch.int8, "UINT8": torch.uint8, "INT16": torch.int16, "INT32": torch.int32,
    "INT64": torch.int64, "UINT16": torch.int32, "UINT32": torch.int64,
}
# How the weight file and immediate `bytes` values store each type (unsigned 16/32-bit widen in torch).
NUMPY_DTYPES = {"FLOAT16": np.float16, "FLOAT32": np.float32, "INT8": np.int8, "UINT8": np.uint8,
                "INT16": np.int16, "UINT16": np.uint16, "INT32": np.int32, "UINT32": np.uint32}
BLOB_READERS = {"FLOAT16": "read_fp16_data", "FLOAT32": "read_float_data", "INT8": "read_int8_data",
                "UINT8": "read_uint8_data", "INT16": "read_int16_data", "UINT16": "read_uint16_data",
                "INT32": "read_int32_data", "UINT32": "read_uint32_data"}
# The `dtype` strings of `cast`.
CAST_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "int32": torch.int32, "bool": torch.bool,
               "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16}

OPERATIONS: dict[str, Callable] = {}


def operation(*names: str):
    """Register an implementation under one or more MIL operation types."""
    def register(function):
        for name in names:
            OPERATIONS[name] = function
        return function
    return register


def supported_operations() -> list[str]:
    return sorted(OPERATIONS)


class Inputs:
    """An operation's inputs by name: one value, or a list for variadic inputs such as concat's `values`."""

    def __init__(self, op_type: str, values: dict):
        self.op_type = op_type
        self.values = values

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __getitem__(self, name: str):
        if name not in self.values:
            raise MNV4Error(f"{self.op_type} is missing its required input {name!r}")
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def ints(self, name: str, default=None) -> list[int] | None:
        value = self.values.get(name)
        return default if value is None else [int(v) for v in torch.as_tensor(value).reshape(-1).tolist()]

    def scalar(self, name: str, default=None):
        value = self.values.get(name)
        return default if value is None else (value if isinstance(value, str) else torch.as_tensor(value).item())


# ------------------------------------------------------------------------------------------- values

def _tensor_shape(tensor_type) -> list[int | None]:
    return [d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tensor_type.dimensions]


def _decode_value(value, blobs: BlobFiles):
    """A MIL Value (immediate or in the weight file) as a torch tensor, a Python string, or a list of those (a
    classifier's class names)."""
    from coremltools.proto import MIL_pb2

    kind = value.type.WhichOneof("type")
    if kind == "listType":
        return [_decode_value(element, blobs) for element in value.immediateValue.list.values]
    if kind != "tensorType":
        raise MNV4Error(f"values of type {kind} are not supported by the Core ML interpreter")
    tensor_type = value.type.tensorType
    dtype = MIL_pb2.DataType.Name(tensor_type.dataType)
    shape = _tensor_shape(tensor_type)
    if value.WhichOneof("value") == "blobFileValue":
        array = blobs.read(value.blobFileValue.fileName, value.blobFileValue.offset, dtype)
    else:
        tensor = value.immediateValue.tensor
        field = tensor.WhichOneof("value")
        if field == "strings":
            strings = list(tensor.strings.values)
            return strings[0] if not shape else strings
        if field == "bytes":
            if dtype not in NUMPY_DTYPES:
                raise MNV4Error(f"immediate {dtype} values are not supported by the Core ML interpreter")
            array = np.frombuffer(tensor.bytes.values, NUMPY_DTYPES[dtype])
        else:
            array = np.asarray(list(getattr(tensor, field).values))
    if dtype not in TORCH_DTYPES:
        raise MNV4Error(f"{dtype} tensors are not supported by the Core ML interpreter")
    array = np.asarray(array, NUMPY_DTYPES.get(dtype))
    # torch has no unsigned 16/32-bit arithmetic: those widen to the next signed type.
    array = array.astype(np.int64) if dtype in ("UINT16", "UINT32") else array.copy()
    return torch.from_numpy(array).to(TORCH_DTYPES[dtype]).reshape(shape)


class BlobFiles:
    """The program's weight files, each read through coremltools' blob-storage reader."""

    def __init__(self, package: Path):
        self.weights = package / WEIGHTS_DIR
        self.readers = {}

    def read(self, file_name: str, offset: int, dtype: str) -> np.ndarray:
        # Paths are written as "@model_path/weights/weight.bin".
        path = self.weights / file_name.split("/")[-1]
        if path not in self.readers:
            if not path.is_file():
                raise DamagedArtifactError(f"cannot load {path.parents[3].name}: its weight file {path.name} is missing")
            from coremltools.libmilstoragepython import _BlobStorageReader

            self.readers[path] = _BlobStorageReader(str(path))
        if dtype not in BLOB_READERS:
            raise MNV4Error(f"{dtype} weights are not supported by the Core ML interpreter")
        data = np.asarray(getattr(self.readers[path], BLOB_READERS[dtype])(offset))
        # The reader returns float16 as its raw 16-bit patterns.
        return data.view(np.float16) if dtype == "FLOAT16" else data


# -------------------------------------------------------------------------------------------- program

class Program:
    """The `main` function of a saved ML program, ready to run on torch tensors."""

    def __init__(self, package: str | Path):
        self.package = Path(package)
        try:
            from coremltools.proto import Model_pb2
        except ImportError:
            raise MissingExtraError("The Core ML interpreter", "coreml") from None
        model_file = self._root_model()
        spec = Model_pb2.Model()
        try:
            spec.ParseFromString(model_file.read_bytes())
        except Exception as error:  # protobuf's DecodeError, or an unreadable file
            raise DamagedArtifactError(f"cannot load {self.package.name}: {model_file.name} is not a Core ML model "
                                       f"({one_line(error)})") from None
        if spec.WhichOneof("Type") != "mlProgram":
            raise MNV4Error(f"{self.package.name} holds a {spec.WhichOneof('Type')} model, not an ML program")
        self.spec = spec
        functions = spec.mlProgram.functions
        if FUNCTION not in functions:
            raise MNV4Error(f"{self.package.name} has no function {FUNCTION!r} (it has {', '.join(functions)})")
        function = functions[FUNCTION]
        self.opset = function.opset
        self.block = function.block_specializations[self.opset]
        self.inputs = {named.name: named.type.tensorType for named in function.inputs}
        self._check_supported(self.block, f"function {FUNCTION} ({self.opset})")
        self.blobs = BlobFiles(self.package)
        # Constants are decoded once, and constexpr_* operations (compressed weights) run once, at load
        # as in Core ML; `steps` are what every prediction runs.
        self.constants = {op.outputs[0].name: _decode_value(op.attributes["val"], self.blobs)
                          for op in self.block.operations if op.type == "const"}
        self.constants = self._execute([op for op in self.block.operations if op.type.startswith("constexpr_")],
                                       self.constants)
        self.steps = [op for op in self.block.operations if op.type != "const" and not op.type.startswith("constexpr_")]

    def _root_model(self) -> Path:
        """The model file that the package's Manifest.json names as its root, found as Core ML finds it, so
        that a package whose manifest Core ML could not read is refused here too. (coremltools' ModelPackage
        would read it as well, but it writes the manifest back: a verifier must not change what it checks.)"""
        manifest = self.package / "Manifest.json"
        if not manifest.is_file():
            raise DamagedArtifactError(f"cannot load {self.package}: it has no Manifest.json, so it is no .mlpackage")
        try:
            document = json.loads(manifest.read_text())
            entry = document["itemInfoEntries"][document["rootModelIdentifier"]]
            model_file = self.package / "Data" / entry["path"]
        except (ValueError, KeyError, TypeError) as error:  # not JSON, or not the package format
            raise DamagedArtifactError(f"cannot load {self.package.name}: its Manifest.json cannot be read "
                                       f"({one_line(error)})") from None
        if not model_file.is_file():
            raise DamagedArtifactError(f"cannot load {self.package.name}: the model file its Manifest.json names is "
                                       f"missing (Data/{entry['path']})")
        return model_file

    def _check_supported(self, block, where: str) -> None:
        for index, op in enumerate(block.operations):
            output = op.outputs[0].name if op.outputs else "(no output)"
            if op.type not in OPERATIONS and op.type != "const":
                raise UnsupportedOperationError(
                    f"{self.package.name}: operation {op.type!r} (op {index} of {len(block.operations)} in {where}, "
                    f"output {output!r}) is not implemented by the Core ML interpreter; it implements "
                    f"{', '.join(supported_operations())}")
            if op.blocks:
                raise UnsupportedOperationError(
                    f"{self.package.name}: operation {op.type!r} (op {index} in {where}, output {output!r}) has "
                    f"nested blocks (control flow), which the Core ML interpreter does not run")

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the function's inputs (by name) to its outputs (by name), each in its declared dtype."""
        environment = self.values(feeds)
        return {name: environment[name] for name in self.block.outputs}

    def values(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every variable of one run by name: constants, inputs, and each operation's outputs in its declared
        dtype (what coremltools' calibration reads by appending every intermediate tensor to the outputs)."""
        from coremltools.proto import MIL_pb2

        environment = {}
        for name, tensor_type in self.inputs.items():
            if name not in feeds:
                raise MNV4Error(f"{self.package.name} needs input {name!r}")
            environment[name] = feeds[name].to(TORCH_DTYPES[MIL_pb2.DataType.Name(tensor_type.dataType)])
        return self._execute(self.steps, {**self.constants, **environment})

    def computed(self) -> list[str]:
        """The names of the variables that `steps` compute, in program order."""
        return [output.name for op in self.steps for output in op.outputs]

    def _execute(self, ops, environment: dict) -> dict:
        from coremltools.proto import MIL_pb2

        with torch.no_grad():
            for op in ops:
                # constexpr_* operations take their constants as attributes, the others as inputs (bound
                # to a variable by name, or to a value written into the operation).
                values = {key: _decode_value(attribute, self.blobs)
                          for key, attribute in op.attributes.items() if key != "name"}
                for key, argument in op.inputs.items():
                    bound = [environment[binding.name] if binding.WhichOneof("binding") == "name"
                             else _decode_value(binding.value, self.blobs)
                             for binding in argument.arguments]
                    values[key] = [_widen(v) for v in bound] if len(bound) > 1 else _widen(bound[0])
                try:
                    results = OPERATIONS[op.type](Inputs(op.type, values))
                except (RuntimeError, ValueError, IndexError, TypeError) as error:
                    raise MNV4Error(f"{self.package.name}: operation {op.type!r} (output {op.outputs[0].name!r}) "
                                    f"failed: {error}") from None
                results = results if isinstance(results, tuple) else (results,)
                for output, result in zip(op.outputs, results):
                    # Rounding each result to its declared type is what makes an fp16 program fp16. (classify's
                    # label and dictionary are no tensors.)
                    environment[output.name] = result.to(TORCH_DTYPES[MIL_pb2.DataType.Name(
                        output.type.tensorType.dataType)]) if isinstance(result, torch.Tensor) else result
        return environment


def _widen(value):
    """float16 tensors are read exactly as float32; the result is rounded back after the operation."""
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.float16 else value


# ---------------------------------------------------------------------------------------- operations

@operation("cast")
def _cast(inputs: Inputs):
    dtype = inputs.scalar("dtype")
    if dtype not in CAST_DTYPES:
        raise ValueError(f"cast to {dtype!r} is not supported")
    return inputs["x"].to(CAST_DTYPES[dtype])


def _spatial_padding(pad_type: str, pad: list[int] | None, sizes, kernel, strides, dilations) -> list[int]:
    """(before, after) per spatial axis, as MIL's conv/pool define them: `custom` from `pad`, `valid` none,
    `same` pads so that out = ceil(in / stride) with the odd element after, `same_lower` with it before."""
    if pad_type == "custom":
        return list(pad)
    if pad_type == "valid":
        return [0] * (2 * len(sizes))
    if pad_type not in ("same", "same_lower"):
        raise ValueError(f"unknown pad_type {pad_type!r}")
    padding = []
    for size, k, stride, dilation in zip(sizes, kernel, strides, dilations):
        effective = (k - 1) * dilation + 1
        total = max(0, (math.ceil(size / stride) - 1) * stride + effective - size)
        small, large = total // 2, total - total // 2
        padding += [small, large] if pad_type == "same" else [large, small]
    return padding


def _torch_padding(padding: list[int]) -> list[int]:
    """MIL lists (before, after) from the first spatial axis; F.pad wants them from the last."""
    pairs = [padding[i:i + 2] for i in range(0, len(padding), 2)]
    return [p for pair in reversed(pairs) for p in pair]


@operation("conv")
def _conv(inputs: Inputs):
    x, weight = inputs["x"], inputs["weight"]
    spatial = x.dim() - 2
    if spatial not in (1, 2, 3):
        raise ValueError(f"conv of rank {x.dim()} is not supported")
    strides = inputs.ints("strides", [1] * spatial)
    dilations = inputs.ints("dilations", [1] * spatial)
    padding = _spatial_padding(inputs.scalar("pad_type", "valid"), inputs.ints("pad", [0] * 2 * spatial),
                               x.shape[2:], weight.shape[2:], strides, dilations)
    x = F.pad(x, _torch_padding(padding))
    function = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return function(x, weight, inputs.get("bias"), strides, 0, dilations, inputs.scalar("groups", 1))


@operation("avg_pool")
def _avg_pool(inputs: Inputs):
    x = inputs["x"]
    kernel = inputs.ints("kernel_sizes")
    strides = inputs.ints("strides", [1] * len(kernel))
    padding = _spatial_padding(inputs.scalar("pad_type", "valid"), inputs.ints("pad", [0] * 2 * len(kernel)),
                               x.shape[2:], kernel, strides, [1] * len(kernel))
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(kernel) - 1]

    def average(t):  # over whole windows, the padding counting as zeros
        return pool(F.pad(t, _torch_padding(padding)), kernel, strides, 0, bool(inputs.scalar("ceil_mode", False)))

    if not inputs.scalar("exclude_padding_from_average", False):
        return average(x)
    # Dividing by the share of real elements in each window averages over those alone.
    return average(x) / average(torch.ones_like(x[:1, :1]))


@operation("relu")
def _relu(inputs: Inputs):
    return torch.relu(inputs["x"])


@operation("gelu")
def _gelu(inputs: Inputs):
    x, mode = inputs["x"], inputs.scalar("mode", "EXACT")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(f"unknown gelu mode {mode!r}")


@operation("add")
def _add(inputs: Inputs):
    return inputs["x"] + inputs["y"]


@operation("mul")
def _mul(inputs: Inputs):
    return inputs["x"] * inputs["y"]


def _axes(inputs: Inputs, rank: int) -> list[int]:
    axes = inputs.ints("axes")
    return list(range(rank)) if axes is None else [a % rank for a in axes]


@operation("reduce_mean")
def _reduce_mean(inputs: Inputs):
    x = inputs["x"]
    return torch.mean(x, dim=_axes(inputs, x.dim()), keepdim=bool(inputs.scalar("keep_dims", False)))


@operation("reshape")
def _reshape(inputs: Inputs):
    """iOS 17 reshape: -1 is inferred; a 0 copies the input size aligned from the right (1 when none)."""
    x, shape = inputs["x"], inputs.ints("shape")
    sizes = list(x.shape)
    resolved = []
    for i, size in enumerate(shape):
        j = x.dim() - (len(shape) - i)
        resolved.append((sizes[j] if j >= 0 else 1) if size == 0 else size)
    return x.reshape(resolved)


@operation("transpose")
def _transpose(inputs: Inputs):
    return inputs["x"].permute(inputs.ints("perm"))


@operation("expand_dims")
def _expand_dims(inputs: Inputs):
    x = inputs["x"]
    rank = x.dim() + len(inputs.ints("axes"))
    for axis in sorted(a % rank for a in inputs.ints("axes")):
        x = x.unsqueeze(axis)
    return x


@operation("matmul")
def _matmul(inputs: Inputs):
    x, y = inputs["x"], inputs["y"]
    if inputs.scalar("transpose_x", False):
        x = x.transpose(-1, -2)
    if inputs.scalar("transpose_y", False):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


@operation("linear")
def _linear(inputs: Inputs):
    return F.linear(inputs["x"], inputs["weight"], inputs.get("bias"))


@operation("softmax")
def _softmax(inputs: Inputs):
    return torch.softmax(inputs["x"], dim=inputs.scalar("axis", -1))


@operation("classify")
def _classify(inputs: Inputs):
    """A classifier's outputs (Core ML's predictedFeatureName and predictedProbabilitiesName): the name of the class
    with the highest probability (the first of equals), and each class's probability by name, as float64 (the
    dictionary's value type)."""
    probabilities, classes = inputs["probabilities"].reshape(-1), inputs["classes"]
    if len(classes) != probabilities.numel():
        raise ValueError(f"{len(classes)} classes for {probabilities.numel()} probabilities")
    return classes[int(torch.argmax(probabilities))], dict(zip(classes, probabilities.double().tolist()))


@operation("batch_norm")
def _batch_norm(inputs: Inputs):
    """MIL: gamma * (x - mean) / sqrt(variance + epsilon) + beta over axis 1, from stored statistics."""
    return F.batch_norm(inputs["x"], inputs["mean"], inputs["variance"], inputs.get("gamma"), inputs.get("beta"),
                        training=False, eps=inputs.scalar("epsilon", 1e-5))


# ----------------------------------------------------------------------- compressed weights (iOS 16+)

def _unpack_bits(packed: torch.Tensor, nbits: int, count: int) -> torch.Tensor:
    """Unsigned `nbits`-bit fields packed from each byte's least significant bit upward (MIL's layout)."""
    bits = np.unpackbits(packed.numpy().astype(np.uint8), bitorder="little")[:count * nbits].reshape(count, nbits)
    return torch.from_numpy(bits.astype(np.int64) @ (1 << np.arange(nbits, dtype=np.int64)))


def _along_axis(vector: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A scalar, or a vector laid along `axis` of a rank-`rank` tensor."""
    if vector.dim() == 0:
        return vector
    shape = [1] * rank
    shape[axis] = -1
    return vector.reshape(shape)


@operation("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(inputs: Inputs):
    """scale * (quantized_data - zero_point), scale and zero point per slice along `axis` (or scalars)."""
    data = inputs["quantized_data"]
    axis = inputs.scalar("axis") % data.dim()
    zero_point = _along_axis(inputs["zero_point"].float(), data.dim(), axis)
    scale = _along_axis(inputs["scale"].float(), data.dim(), axis)
    return scale * (data.float() - zero_point)


@operation("constexpr_lut_to_dense")
def _constexpr_lut_to_dense(inputs: Inputs):
    """Palettised weights: log2(len(lut))-bit indices into the look-up table, packed LSB first."""
    lut, shape = inputs["lut"], inputs.ints("shape")
    nbits = int(math.log2(lut.numel()))
    return lut[_unpack_bits(inputs["indices"], nbits, math.prod(shape))].reshape(shape)


# ------------------------------------------------------------------- activation quantization (iOS 17+)

def _quantization_parameters(inputs: Inputs, rank: int):
    """scale and zero point (0 when absent) as float32, laid along `axis` when they are vectors."""
    scale = inputs["scale"].float()
    zero_point = inputs.get("zero_point")
    zero_point = torch.zeros((), dtype=torch.float32) if zero_point is None else zero_point.float()
    if scale.dim() == 0:
        return scale, zero_point
    axis = inputs.scalar("axis") % rank
    return _along_axis(scale, rank, axis), _along_axis(zero_point, rank, axis)


@operation("quantize")
def _quantize(inputs: Inputs):
    """clip(round(input / scale) + zero_point) to the range of `output_dtype` (int8 or uint8), as the MIL
    definition states and coremltools' own value inference computes it: division by the scale, rounding
    half to even (numpy's around, torch's round), then the zero point, then saturation."""
    x = inputs["input"]
    dtype = CAST_DTYPES.get(inputs.scalar("output_dtype"))
    if dtype not in (torch.int8, torch.uint8):
        raise ValueError(f"quantize to {inputs.scalar('output_dtype')!r} is not supported")
    scale, zero_point = _quantization_parameters(inputs, x.dim())
    limits = torch.iinfo(dtype)
    quantized = torch.round(x.float() / scale) + zero_point
    return torch.clamp(quantized, limits.min, limits.max).to(dtype)


@operation("dequantize")
def _dequantize(inputs: Inputs):
    """scale * (input - zero_point), in the scale's type."""
    x = inputs["input"]
    scale, zero_point = _quantization_parameters(inputs, x.dim())
    return scale * (x.float() - zero_point)
