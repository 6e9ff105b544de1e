"""LiteRT (TFLite) interpreter runner for .tflite artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact.facts import IMAGE_INPUT_NAME
from ..errors import DamagedArtifactError, MissingExtraError, MissingSystemPartError, MNV4Error, one_line
from .base import Runner, artifact_layout, input_size, run_in_artifact_batches, vulkan_drivers

# TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16 (tflite/delegates/xnnpack/xnnpack_delegate.h): every float32 operator
# computes in float16, as XNNPACK does on phones when an app asks for it. LiteRT's CPU accelerator puts the flags
# given in CpuOptions in place of the delegate's defaults, whose other bits are for quantized operators: an fp16
# artifact has none.
XNNPACK_FORCE_FP16 = 0x4


class LiteRTRunner(Runner):
    """A .tflite artifact in the LiteRT interpreter, on CPU with its default XNNPACK delegate.

    `xnnpack_fp16` runs it instead as a LiteRT CompiledModel whose XNNPACK computes every float operator in
    float16 (the Interpreter cannot pass XNNPACK flags): the arithmetic of an fp16 artifact on a phone that
    asks for it, which on a CPU with native float16 arithmetic (ARMv8.2 FP16, AVX512-FP16) is not float32's.
    `compute_dtype` is then "float16". `fully_delegated` says whether XNNPACK ran every operator; where it
    did not, TFLite's own kernels computed the rest, and the numbers are not XNNPACK's.

    An artifact with integer input and output (int8 for NPUs) still takes NCHW float32 and gives float32
    logits: the input is quantized with the input tensor's own scale and zero point (rounded, clipped to
    the integer range) and the output dequantized with the output tensor's, read from the file."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1, *, layout: str | None = None, xnnpack_fp16: bool = False):
        super().__init__(path, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingExtraError("LiteRT", "tflite") from None
        # The interpreter reads the file's inputs and outputs either way; it computes only without xnnpack_fp16.
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        (model_input,) = self.interpreter.get_input_details()
        model_output = self.interpreter.get_output_details()[0]
        self._input_index = model_input["index"]
        self._output_index = model_output["index"]
        self._input_dtype = model_input["dtype"]
        self.image_input = model_input["name"] == IMAGE_INPUT_NAME
        self._quantize = quantization_of(model_input)
        self._dequantize = quantization_of(model_output)
        self.layout = artifact_layout(model_input["shape_signature"], layout)
        self.input_size = input_size(model_input["shape_signature"], self.layout)
        # shape_signature marks a dynamic axis with -1.
        batch = int(model_input["shape_signature"][0])
        self.artifact_batch = None if batch == -1 else batch
        self.xnnpack_fp16 = xnnpack_fp16
        self._compiled = self.compiled_model()
        if self._compiled:
            self.fully_delegated = self._compiled.fully_accelerated
        else:
            self.interpreter.allocate_tensors()  # where the interpreter hands the graph to XNNPACK
            self.fully_delegated = whole_graph_delegated(self.interpreter)

    def compiled_model(self) -> CompiledLiteRT | None:
        """The artifact as a LiteRT CompiledModel where the interpreter cannot compute as asked, else None: here
        XNNPACK forced to float16 arithmetic (the Interpreter cannot pass XNNPACK flags)."""
        if not self.xnnpack_fp16:
            return None
        from ai_edge_litert.options import CpuOptions, Options

        self.compute_dtype = "float16"
        return CompiledLiteRT(self.path, Options(cpu_options=CpuOptions(num_threads=self.threads,
                                                                        xnnpack_flags=XNNPACK_FORCE_FP16)))

    def run(self, batch: np.ndarray) -> np.ndarray:
        # An integer input is quantized in _infer, from float32 (the padding of a last batch included).
        dtype = np.float32 if self._quantize else self._input_dtype
        return run_in_artifact_batches(batch, self.layout, dtype, self.artifact_batch, self._infer)

    def _interpret(self, batch: np.ndarray) -> np.ndarray:
        if tuple(self.interpreter.get_input_details()[0]["shape"]) != batch.shape:
            # Only a dynamic-batch artifact gets here: fixed ones are always fed their own shape.
            self.interpreter.resize_tensor_input(self._input_index, batch.shape)
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index)

    def close(self) -> None:
        # The interpreter shares the compiled model's LiteRT environment: both go, so that it is freed now.
        if self._compiled:
            self._compiled.close()
            self._compiled = self.interpreter = None

    def execution(self) -> dict:
        return {"delegate": "XNNPACK", "fully_delegated": self.fully_delegated, "xnnpack_fp16": self.xnnpack_fp16}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._quantize:
            scale, zero_point = self._quantize
            limits = np.iinfo(self._input_dtype)
            batch = np.clip(np.round(batch / scale) + zero_point, limits.min, limits.max).astype(self._input_dtype)
        with self.running():
            logits = self._compiled.run(batch) if self._compiled else self._interpret(batch)
        if self._dequantize:
            scale, zero_point = self._dequantize
            logits = (logits.astype(np.float32) - zero_point) * np.float32(scale)
        return logits


class LiteRTGpuRunner(LiteRTRunner):
    """A .tflite artifact on LiteRT's GPU accelerator (ML Drift over WebGPU/Dawn, the GPU path of LiteRT on phones),
    which needs a Vulkan device: on a machine without a GPU, Mesa's software one (lavapipe, Mesa >= 24).

    By default it computes in float16, as phones' GPU delegates do (`compute_dtype` "float16": the fp16-arithmetic
    limits); `enforce_f32` keeps float32. A graph the accelerator takes only in part ran partly on the CPU: that
    is refused, never called a GPU verdict."""

    runtime = "litert-gpu"

    def __init__(self, path: str | Path, threads: int = 1, *, enforce_f32: bool = False, layout: str | None = None):
        self.enforce_f32 = enforce_f32
        self.runtime = "litert-gpu-fp32" if enforce_f32 else "litert-gpu"
        super().__init__(path, threads, layout=layout)
        if not self.fully_delegated:
            raise MNV4Error(f"{self.runtime}: the GPU accelerator took only part of {self.path.name} (the rest ran on "
                            f"the CPU): not a GPU verdict")

    def compiled_model(self) -> CompiledLiteRT:
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import GpuOptions, Options

        if not vulkan_drivers():
            raise MissingSystemPartError("a Vulkan driver (Mesa's software one, lavapipe: mesa-vulkan-drivers >= 24)")
        if not self.enforce_f32:
            self.compute_dtype = "float16"
        options = Options(hardware_accelerators=HardwareAccelerator.GPU,
                          gpu_options=GpuOptions(enforce_f32=self.enforce_f32))
        try:
            return CompiledLiteRT(self.path, options)
        except RuntimeError as error:  # LiteRT says only where it failed: name what it needs
            raise DamagedArtifactError(f"{self.runtime} cannot compile {self.path.name} for the GPU ({one_line(error)}); "
                                       f"it needs a Vulkan 1.1 device with Dawn's features: Mesa >= 24 here") from None

    def execution(self) -> dict:
        return {"accelerator": "LiteRT GPU (ML Drift, WebGPU over Vulkan)", "fully_accelerated": self.fully_delegated,
                "arithmetic": "float32" if self.enforce_f32 else "float16"}


class CompiledLiteRT:
    """An artifact as a LiteRT CompiledModel with the accelerator its `options` name."""

    def __init__(self, path: Path, options):
        from ai_edge_litert.compiled_model import CompiledModel

        self.model = CompiledModel.from_file(str(path), options=options)
        # LiteRT's own answer: every operator went to the accelerator asked for.
        self.fully_accelerated = self.model.is_fully_accelerated()
        self._signature = self.model.get_signature_by_index(0)["key"]
        self._allocate()

    def _allocate(self) -> None:
        """Buffers for the model's current input shape, and the shapes they hold. The outputs are host memory that
        the runtime writes into: the GPU accelerator's own output buffers fail to lock when read."""
        from ai_edge_litert.tensor_buffer import TensorBuffer

        (model_input,) = self.model.get_input_tensor_details(self._signature).values()
        model_output = next(iter(self.model.get_output_tensor_details(self._signature).values()))
        self._input_shape, self._output_shape = tuple(model_input["shape"]), tuple(model_output["shape"])
        self._output_dtype = np.dtype(model_output["dtype"])  # int8 for an --int8-io artifact
        self._inputs = self.model.create_input_buffers(0)
        self._outputs = [TensorBuffer.create_from_host_memory(np.zeros(self._output_shape, self._output_dtype))]

    def close(self) -> None:
        """Free the model and its LiteRT environment now, not at exit, where the accelerators' destruction logs on
        stderr after the command's own last line."""
        environment = self.model.environment
        self._inputs = self._outputs = self.model = None
        environment.close()

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self._input_shape:  # only a dynamic-batch artifact gets here
            self.model.resize_input_tensor(0, batch.shape)
            self._allocate()
        self._inputs[0].write(batch)
        self.model.run_by_index(0, self._inputs, self._outputs)
        return self._outputs[0].read(int(np.prod(self._output_shape)), self._output_dtype).reshape(self._output_shape)


def whole_graph_delegated(interpreter) -> bool:
    """Whether XNNPACK, the interpreter's one delegate, took every operator. The interpreter appends one DELEGATE
    node per part of the graph it handed over and keeps the nodes it replaced in the list (the private
    `_get_ops_details` is the only view of them in the Python API), so the whole graph went to XNNPACK when one
    DELEGATE node takes no tensor that another node computes and yields every output of the graph."""
    operators = interpreter._get_ops_details()
    delegates = [op for op in operators if op["op_name"] == "DELEGATE"]
    if len(delegates) != 1:
        return False
    computed = {int(tensor) for op in operators if op["op_name"] != "DELEGATE" for tensor in op["outputs"]}
    graph_outputs = {detail["index"] for detail in interpreter.get_output_details()}
    (delegate,) = delegates
    return computed.isdisjoint(int(tensor) for tensor in delegate["inputs"]) and \
        graph_outputs <= {int(tensor) for tensor in delegate["outputs"]}


def quantization_of(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized integer input or output tensor; None for a float one (or an
    integer one without quantization, fed as it is)."""
    scales, zero_points = detail["quantization_parameters"]["scales"], detail["quantization_parameters"]["zero_points"]
    if not np.issubdtype(detail["dtype"], np.integer) or not len(scales):
        return None
    if len(scales) != 1:
        raise MNV4Error(f"{detail['name']}: an integer input or output must be quantized per tensor, not with "
                        f"{len(scales)} scales")
    return float(scales[0]), int(zero_points[0])
