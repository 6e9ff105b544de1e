"""timm's MobileNetV4 exported the way a user would by default, one toolchain call each: the obvious
alternative our artifacts are compared with. Same weights (loaded through timm's state_dict), same
resolution, fixed batch, at the precisions the precision table marks `peer` (float32: a user's default export in
every toolchain)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..artifact.formats import FORMATS
from ..errors import MissingExtraError, MNV4Error


def timm_model(variant: str, state_dict: dict, num_classes: int) -> torch.nn.Module:
    try:
        import timm
    except ImportError:
        raise MissingExtraError("timm (the peer model)", "bench") from None
    model = timm.create_model(f"mobilenetv4_{variant}", pretrained=False, num_classes=num_classes)
    model.load_state_dict(state_dict)
    return model.eval()


def _onnx(model, example, path: Path) -> None:
    # One file (the default would put the weights in a .onnx.data file beside it), so sizes compare.
    torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False)


def _ort(model, example, path: Path) -> None:
    # timm's ONNX file through onnxruntime's tool at its default target platform (none), as mnv4 converts.
    from ..export.ort import convert

    with tempfile.TemporaryDirectory(prefix="mnv4-peer-ort-") as scratch:
        source = Path(scratch) / "model.onnx"
        _onnx(model, example, source)
        shutil.move(convert(source, Path(scratch), None)[0], path)


def _openvino(model, example, path: Path) -> None:
    # timm's module through OpenVINO's converter with its example (tracing); float32 weights (save_model's default
    # would store float16 ones), as the float32 peer is measured. The .bin goes beside `path`.
    import openvino as ov

    ov.save_model(ov.convert_model(model, example_input=example), str(path), compress_to_fp16=False)


def _tflite(model, example, path: Path) -> None:
    import litert_torch

    litert_torch.convert(model, (example,)).export(str(path))


def _executorch(model, example, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, (example,))
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def _coreml(model, example, path: Path) -> None:
    import coremltools as ct

    program = torch.export.export(model, (example,)).run_decompositions({})
    ct.convert(program, inputs=[ct.TensorType(shape=example.shape)], convert_to="mlprogram",
               minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT32,
               skip_model_load=True).save(str(path))


def _ncnn(model, example, path: Path) -> None:
    # pnnx as its wrapper's pnnx.export converts, float32 weights (its default stores float16) so that it compares
    # with mnv4's fp32; only the .param and its .bin are kept, under pnnx's own blob names.
    from ..artifact.files import companion_paths
    from ..export.ncnn import convert

    with tempfile.TemporaryDirectory(prefix="mnv4-peer-ncnn-") as scratch:
        param, weights = convert(model, example, Path(scratch), fp16=False)
        shutil.move(weights, companion_paths(path)["weights"])
        shutil.move(param, path)


PEER_EXPORTERS = {"onnx": _onnx, "tflite": _tflite, "executorch": _executorch, "coreml": _coreml, "ort": _ort,
                  "openvino": _openvino, "ncnn": _ncnn}
# A format added to the table needs its timm exporter here too: say so on import, not halfway through a bench.
if PEER_EXPORTERS.keys() != FORMATS.keys():
    raise MNV4Error(f"timm peer exporters ({', '.join(PEER_EXPORTERS)}) do not match the formats "
                    f"({', '.join(FORMATS)}) in mnv4/artifact/formats.py")


def export_peer(fmt: str, model: torch.nn.Module, example: torch.Tensor, path: Path) -> float:
    """Write timm's model as a `fmt` artifact at `path`; returns the export seconds."""
    started = time.perf_counter()
    try:
        PEER_EXPORTERS[fmt](model, example, path)
    except ImportError:
        raise MissingExtraError(f"{fmt} export", FORMATS[fmt].extra) from None
    return time.perf_counter() - started
