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
        path.write_text(renamed(param.read_text(), {PNNX_INPUT: input_name, PNNX_OUTPUT: OUTPUT_NAME}))
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


def renamed(param: str, names: dict[str, str]) -> str:
    """The .param text with the blobs of `names` renamed. Each layer line is `type name inputs outputs blob... key=value...`:
    only its blob fields change."""
    lines = param.splitlines()
    for number, line in enumerate(lines[2:], start=2):
        fields = line.split()
        if len(fields) < 4:
            continue
        blobs = 4 + int(fields[2]) + int(fields[3])
        fields[4:blobs] = [names.get(blob, blob) for blob in fields[4:blobs]]
        lines[number] = " ".join(fields)
    return "\n".join(lines) + "\n"


def layer_counts(param: str) -> dict[str, int]:
    """The layers of a .param, by type (its first two lines are the magic number and the counts)."""
    counts: dict[str, int] = {}
    for line in param.splitlines()[2:]:
        if line.split():
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return dict(sorted(counts.items()))
