"""ncnn format, what Tencent's ncnn runs on phones' CPUs and Vulkan GPUs: the model traced by PyTorch and converted
by pnnx (PyTorch Neural Network eXchange, ncnn's own converter) into a .param (the graph, text) and a .bin (the
weights), the format's companion. pnnx also writes its own IR, an ONNX file and Python scripts: the conversion runs
in a scratch folder and only the ncnn pair leaves it.

fp16 is pnnx's fp16 weight storage: the .bin holds float16 weights (half the bytes), which ncnn widens to float32
when it loads them on a CPU, so the arithmetic stays float32 unless the runtime asks for float16 (the Vulkan
runtime's default). ncnn has no int8 here: its quantization tools (ncnn2table, ncnn2int8) are in neither the ncnn
nor the pnnx wheel (docs/export.md).

ncnn's files have no place for a description (the .param holds layers and blobs only): the manifest holds it. pnnx
names the input blob in0 and the output out0; they are renamed to mnv4's names (facts.py), so that an app and the
runner read the same interface as every other format's."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import OUTPUT_NAME, ArtifactFacts, Description, Interface
from ..artifact.files import companion_paths
from ..artifact.options import ArtifactOptions
from ..artifact.precisions import FP16
from ..errors import MissingExtraError, MNV4Error, one_line

# pnnx's names of the graph's one input and output blob.
PNNX_INPUT, PNNX_OUTPUT = "in0", "out0"
# pnnx prints its passes; a conversion seldom takes more than a minute, one that hangs is stopped.
CONVERT_SECONDS = 600


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, options: ArtifactOptions,
           calibration: np.ndarray | None = None, description: Description | None = None) -> ArtifactFacts:
    """Write `model` as an ncnn .param at `path` and its weights beside it (the companion .bin); returns its facts."""
    fp16 = options.precision == FP16.name
    input_name = description.input_name if description else "pixels"
    (weights,) = companion_paths(path).values()
    with tempfile.TemporaryDirectory(prefix="mnv4-ncnn-") as scratch:
        param, written = convert(model, example, Path(scratch), fp16)
        graph = global_pooling_head(param.read_text())
        path.write_text(renamed(graph, {PNNX_INPUT: input_name, PNNX_OUTPUT: OUTPUT_NAME}))
        shutil.move(written, weights)
    layout = "NHWC" if options.image_input else "NCHW"
    interface = Interface(input_name=input_name, input_layout=layout, input_shape=list(example.shape),
                          input_dtype="float32", output_name=OUTPUT_NAME, output_dtype="float32",
                          input_kind="image" if options.image_input else "tensor")
    return ArtifactFacts(
        interface=interface, weights_dtype="float16" if fp16 else "float32", compute_dtype="float32",
        toolchain={"pnnx": metadata.version("pnnx"), "ncnn": metadata.version("ncnn")},
        details={"ncnn": {"weights_storage": "float16 (pnnx fp16=1)" if fp16 else "float32 (pnnx fp16=0)",
                          "layers": layer_counts(path.read_text()),
                          "description": "none in the file (ncnn has no metadata): the manifest holds it"}})


def convert(model: torch.nn.Module, example: torch.Tensor, folder: Path, fp16: bool) -> tuple[Path, Path]:
    """`model` traced on `example` and converted by pnnx in `folder`: the ncnn .param and .bin it wrote. pnnx's own
    Python wrapper ignores the converter's exit status, so the converter is run here and a failure said in a line."""
    try:
        import pnnx
    except ImportError:
        raise MissingExtraError("ncnn export", "ncnn") from None
    traced = folder / "model.pt"
    with torch.no_grad():
        torch.jit.trace(model.eval(), example).save(str(traced))
    shape = ",".join(map(str, example.shape))
    command = [pnnx.EXEC_PATH, str(traced), f"inputshape=[{shape}]f32", "device=cpu", f"fp16={int(fp16)}"]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=CONVERT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MNV4Error(f"pnnx could not convert the model: {one_line(error)}") from None
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        said = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise MNV4Error(f"pnnx could not convert the model to ncnn: {said}")
    return param, weights


@dataclass
class Layer:
    """One layer line of a .param: `type name inputs outputs blob... key=value...`."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str]  # ncnn's parameter id -> its value, as written

    @classmethod
    def parse(cls, line: str) -> Layer:
        fields = line.split()
        inputs, outputs = int(fields[2]), int(fields[3])
        blobs = fields[4:4 + inputs + outputs]
        params = dict(field.split("=", 1) for field in fields[4 + inputs + outputs:])
        return cls(fields[0], fields[1], blobs[:inputs], blobs[inputs:], params)

    def line(self) -> str:
        return " ".join([self.type, self.name, str(len(self.inputs)), str(len(self.outputs)), *self.inputs,
                         *self.outputs, *(f"{key}={value}" for key, value in self.params.items())])


def parse(param: str) -> tuple[str, list[Layer]]:
    """A .param's magic number line and its layers (the second line, the counts, follows from them)."""
    lines = [line for line in param.splitlines() if line.split()]
    return lines[0], [Layer.parse(line) for line in lines[2:]]


def param_text(magic: str, layers: list[Layer]) -> str:
    """The .param of these layers, its counts line recomputed."""
    blobs = {blob for layer in layers for blob in layer.outputs}
    return "\n".join([magic, f"{len(layers)} {len(blobs)}", *(layer.line() for layer in layers)]) + "\n"


def renamed(param: str, names: dict[str, str]) -> str:
    """The .param text with the blobs of `names` renamed."""
    magic, layers = parse(param)
    for layer in layers:
        layer.inputs = [names.get(blob, blob) for blob in layer.inputs]
        layer.outputs = [names.get(blob, blob) for blob in layer.outputs]
    return param_text(magic, layers)


# pnnx's Reduction for the head's `mean(dim=(2, 3), keepdim=True)`: operation 3 (mean), not over all, axes (h, w),
# dims kept, the axes numbered without the batch (fixbug0).
MEAN_OVER_HW = {"0": "3", "1": "0", "-23303": "2,1,2", "4": "1", "5": "1"}
# A Convolution that is a matrix product on a 1x1 map: 1x1 kernel, dilation 1, stride 1, no padding.
POINTWISE = {"1": "1", "11": "1", "2": "1", "12": "1", "3": "1", "13": "1", "4": "0", "14": "0"}
# Convolution's parameter -> InnerProduct's: outputs, bias term, weight size, activation and its parameters.
AS_INNER_PRODUCT = {"0": "0", "5": "1", "6": "2", "9": "9", "10": "10"}


def global_pooling_head(param: str) -> str:
    """The head as pnnx converts timm's (adaptive_avg_pool2d): the spatial mean as a global average Pooling, the 1x1
    Convolution on the pooled vector as an InnerProduct (its .bin entry, weights then bias, reads the same), and a
    Reshape to that vector left out: what ncnnoptimize's replace_reduction_with_global_pooling and
    replace_convolution_with_innerproduct_after_global_pooling do. The same arithmetic in two layers fewer, with
    ncnn's global-pooling and matrix-vector kernels: on lavapipe conv_small ran 1.5x slower than timm's graph
    without it. A graph without the pattern is returned as it is."""
    magic, layers = parse(param)
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for blob in layer.inputs:
            readers.setdefault(blob, []).append(layer)
    for mean in [layer for layer in layers if layer.type == "Reduction" and layer.params == MEAN_OVER_HW]:
        consumers = readers.get(mean.outputs[0], [])
        if len(consumers) != 1:
            continue
        conv = consumers[0]
        if conv.type != "Convolution" or len(conv.inputs) != 1 or not POINTWISE.items() <= conv.params.items() \
                or not set(conv.params) <= {*POINTWISE, *AS_INNER_PRODUCT}:
            continue
        mean.type, mean.params = "Pooling", {"0": "1", "4": "1"}  # average, global: the vector of channel means
        conv.type = "InnerProduct"
        conv.params = {AS_INNER_PRODUCT[key]: value for key, value in conv.params.items() if key in AS_INNER_PRODUCT}
        after = readers.get(conv.outputs[0], [])
        if len(after) == 1 and after[0].type == "Reshape" and after[0].params == {"0": conv.params["0"]}:
            conv.outputs = after[0].outputs
            layers.remove(after[0])
    return param_text(magic, layers)


def layer_counts(param: str) -> dict[str, int]:
    """The layers of a .param, by type."""
    counts: dict[str, int] = {}
    for layer in parse(param)[1]:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    return dict(sorted(counts.items()))
