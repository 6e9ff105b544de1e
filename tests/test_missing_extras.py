"""Each exporter and runner names the extra to install when its toolchain is absent (the package made
unimportable for the test: `sys.modules[name] = None` makes `import name` raise ImportError)."""
import sys

import pytest
import torch

from mnv4.artifact.options import ArtifactOptions
from mnv4.errors import MissingExtraError
from mnv4.export import coreml, executorch, onnx, tflite
from mnv4.runtimes.executorch import ExecuTorchRunner
from mnv4.runtimes.litert import LiteRTRunner
from mnv4.runtimes.onnxruntime import OnnxRuntimeRunner


def exporting(module):
    return lambda path: module.export(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), path, ArtifactOptions())


@pytest.mark.parametrize("make, package, extra", [
    (exporting(onnx), "onnxscript", "onnx"),
    (exporting(tflite), "litert_torch", "tflite"),
    (exporting(executorch), "executorch.exir", "executorch"),
    (exporting(coreml), "coremltools", "coreml"),
    (OnnxRuntimeRunner, "onnxruntime", "onnx"),
    (LiteRTRunner, "ai_edge_litert.interpreter", "tflite"),
    (ExecuTorchRunner, "executorch.runtime", "executorch"),
])
def test_missing_toolchain_names_the_extra(make, package, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(MissingExtraError) as raised:
        make(tmp_path / "model")
    assert raised.value.extra == extra
