"""ORT format, what ONNX Runtime Mobile reads: mnv4's ONNX export (export/onnx.py), described, then converted by
onnxruntime's own tool (`onnxruntime.tools.convert_onnx_models_to_ort`) for a target CPU. Beside the .ort the tool
writes the operators a minimal onnxruntime build must include (`<stem>.required_operators.config`, the input of its
build's --include_ops_by_config), which the pipeline publishes with the artifact (the format's companion).

The conversion is the tool's "Fixed" style at its default level, "all": every graph optimization runs once, here,
and the optimized graph is what the file holds, for the CPU execution provider (the tool's "Runtime" style is for
NNAPI and Core ML, which take nodes at load time). For arm the tool leaves out its NCHWc transformer (x86-only
blocked kernels) and lets QDQ fusions use int8 activations; for amd64 it bakes NCHWc operators in."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import ArtifactFacts, Description
from ..artifact.files import companion_paths
from ..artifact.options import DEFAULT_TARGET_PLATFORM, ArtifactOptions
from ..errors import MissingExtraError
from . import onnx as onnx_export

OPTIMIZATION_STYLE = "Fixed"
OPTIMIZATION_LEVEL = "all"
# The tool reads its level from this variable, and names its files after a level other than "all": pinned, so that
# a variable set in a user's shell neither changes the artifact nor hides the tool's output from us.
_LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
# What the tool does differently for arm, as its source says: it leaves out its NCHWc transformer and lets QDQ
# fusions take int8 activations (session.qdqisint8allowed).
_ARM_DISABLED = ["NchwcTransformer"]


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, options: ArtifactOptions,
           calibration: np.ndarray | None = None, description: Description | None = None) -> ArtifactFacts:
    """Write `model` as an ORT file at `path` and its required operators beside it; returns its facts: the ONNX
    export's (interface, quantization, opset) with the target platform, the tool's optimization and the operators."""
    target = options.target_platform or DEFAULT_TARGET_PLATFORM
    (config,) = companion_paths(path).values()
    with tempfile.TemporaryDirectory(prefix="mnv4-ort-") as scratch:
        source = Path(scratch) / "model.onnx"
        # The target quantizes int8 for its CPUs (int8 activations for arm), not for the one exporting.
        # Described before converting: the tool keeps the doc string and metadata_props.
        facts = onnx_export.export(model, example, source, dataclasses.replace(options, target_platform=target),
                                   calibration, description)
        converted, tool_config = convert(source, Path(scratch) / "ort", target)
        shutil.move(converted, path)
        written = tool_config.read_text()
    config.write_text(_config_text(written, target))
    optimization = {"style": OPTIMIZATION_STYLE, "level": OPTIMIZATION_LEVEL,
                    "disabled_optimizers": [] if target == "amd64" else _ARM_DISABLED,
                    "qdq_int8_allowed": target == "arm"}
    return ArtifactFacts(
        interface=facts.interface, weights_dtype=facts.weights_dtype, compute_dtype=facts.compute_dtype,
        toolchain={**facts.toolchain, "onnxruntime": metadata.version("onnxruntime")}, quantization=facts.quantization,
        details={**facts.details, "target_platform": target, "optimization": optimization,
                 "operators": _operators(written)})


def convert(source: Path, folder: Path, target: str | None) -> tuple[Path, Path]:
    """The ONNX file `source` converted by onnxruntime's tool into `folder` for `target` (None: the tool's default), in
    OPTIMIZATION_STYLE at OPTIMIZATION_LEVEL: the .ort file and the tool's required operators config."""
    try:
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    except ImportError:
        raise MissingExtraError("ORT export", "onnx") from None
    # Its INFO log line ("Created config in <scratch folder>") names a file that is gone by the time anyone reads it.
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with _pinned(_LEVEL_VARIABLE, OPTIMIZATION_LEVEL):
        convert_onnx_models_to_ort(source, output_dir=folder, target_platform=target,
                                   optimization_styles=[OptimizationStyle[OPTIMIZATION_STYLE]])
    return folder / source.with_suffix(".ort").name, folder / source.with_suffix(".required_operators.config").name


def _operators(config: str) -> dict[str, list[str]]:
    """The tool's config as `{"<domain>;<opset>": [operator, ...]}`: one line per domain and opset, comments aside."""
    lines = [line.strip() for line in config.splitlines() if line.strip() and not line.startswith("#")]
    return {f"{domain};{opset}": names.split(",") for domain, opset, names in (line.split(";") for line in lines)}


def _config_text(written: str, target: str) -> str:
    """The tool's config with its comment, which names the scratch file it read, saying what the file is for."""
    header = (f"# The operators of the ORT format model beside this file (mnv4; onnxruntime "
              f"{metadata.version('onnxruntime')} convert_onnx_models_to_ort, target {target}): build onnxruntime "
              f"with --minimal_build --include_ops_by_config <this file>\n")
    return header + "".join(line + "\n" for line in written.splitlines()
                         if line.strip() and not line.startswith("#"))


@contextlib.contextmanager
def _pinned(variable: str, value: str):
    """`variable` set to `value` meanwhile, then as it was."""
    saved = os.environ.get(variable)
    os.environ[variable] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[variable]
        else:
            os.environ[variable] = saved
