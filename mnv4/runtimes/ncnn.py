"""ncnn runners for .param artifacts (their weights in the .bin beside them): on the CPU, and on a Vulkan GPU (here
Mesa's software device, lavapipe)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact.facts import IMAGE_INPUT_NAME
from ..artifact.files import companion_paths, manifest_path
from ..artifact.manifest import read_manifest
from ..errors import DamagedArtifactError, MissingExtraError, MissingSystemPartError, MNV4Error
from .base import Runner, input_size, run_in_artifact_batches, vulkan_drivers

# ncnn's options that store or compute in float16: on by default, taken where the CPU or GPU has float16.
FLOAT16_OPTIONS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic")
# bfloat16 storage: off in ncnn's defaults, so not what an app runs, and kept off everywhere (on lavapipe, with
# float16, it took the seeded conv_small's worst relative error from about 0.06 to 0.13, past the float16 limits).
BFLOAT16_OPTIONS = ("use_bf16_storage", "use_bf16_packed")


class NcnnRunner(Runner):
    """An ncnn artifact on the CPU, in float32: ncnn's float16 and bfloat16 storage and arithmetic are turned off,
    which it would otherwise take on a CPU that has them (ARMv8.2), so that an fp32 artifact computes in float32 and
    an fp16 one widens its weights. ncnn's Mat holds one image: a batch is run an image at a time."""

    runtime = "ncnn"
    fp16 = False  # float16 storage and arithmetic where the device has them

    def __init__(self, path: str | Path, threads: int = 1):
        super().__init__(path, threads)
        try:
            import ncnn
        except ImportError:
            raise MissingExtraError("ncnn", "ncnn") from None
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.configure(self.net.opt)
        self._load(companion_paths(self.path)["weights"])
        ((self._input,), (self._output,)) = self.net.input_names(), self.net.output_names()
        self.image_input = self._input == IMAGE_INPUT_NAME
        self.layout = "NHWC" if self.image_input else "NCHW"
        self.input_size = self._recorded_input_size()

    def configure(self, options) -> None:
        options.num_threads = self.threads
        for name in FLOAT16_OPTIONS:
            setattr(options, name, self.fp16)
        for name in BFLOAT16_OPTIONS:
            setattr(options, name, False)

    def _load(self, weights: Path) -> None:
        if not weights.is_file():
            raise MNV4Error(f"{self.path.name} needs its weights beside it: {weights} is not there")
        # ncnn answers a file it cannot read with a non-zero status (and a line on stderr), not an exception.
        if self.net.load_param(str(self.path)) != 0 or self.net.load_model(str(weights)) != 0:
            raise DamagedArtifactError(f"{self.runtime} cannot load {self.path.name} with {weights.name}: not an ncnn "
                                       f"graph and its weights")
        if len(self.net.input_names()) != 1 or len(self.net.output_names()) != 1:
            raise DamagedArtifactError(f"{self.path.name} is not a classifier: it has {len(self.net.input_names())} "
                                       f"inputs and {len(self.net.output_names())} outputs, not one of each")

    def _recorded_input_size(self) -> tuple[int, int, int] | None:
        """The input's (channels, height, width) from the manifest, where there is one: the .param does not say."""
        if not manifest_path(self.path).is_file():
            return None
        facts = read_manifest(self.path, allow_modified=True).facts
        shape, layout = facts.get("input_shape"), facts.get("input_layout")
        return input_size(shape, layout) if isinstance(shape, list) and len(shape) == 4 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, self.layout, np.float32, 1, self._infer)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(batch[0])  # ncnn's Mat wraps this memory: it must live until the extraction
        with self.running():
            extractor = self.net.create_extractor()
            extractor.input(self._input, self._ncnn.Mat(image))
            status, logits = extractor.extract(self._output)
            if status != 0:
                raise RuntimeError(f"extract returned {status}")
            return np.array(logits, dtype=np.float32).reshape(1, -1)

    def execution(self) -> dict:
        return {"device": "cpu", "float16_storage": False, "float16_arithmetic": False, "batch": "one image a call"}


class NcnnVulkanRunner(NcnnRunner):
    """An ncnn artifact on a Vulkan GPU, by default with ncnn's default options, as an app's `ncnn::Net` runs on a
    phone: float16 storage and arithmetic (`compute_dtype` "float16": the fp16-arithmetic limits); `fp16=False`
    keeps float32. A layer without a Vulkan kernel would run on the CPU: that is refused, never called a GPU
    verdict."""

    runtime = "ncnn-vulkan"

    def __init__(self, path: str | Path, threads: int = 1, *, fp16: bool = True):
        self.fp16 = fp16
        self.runtime = "ncnn-vulkan" if fp16 else "ncnn-vulkan-fp32"
        self.compute_dtype = "float16" if fp16 else None
        super().__init__(path, threads)
        on_cpu = sorted({layer.type for layer in self.net.layers() if not layer.support_vulkan})
        if on_cpu:
            raise MNV4Error(f"{self.runtime}: ncnn has no Vulkan kernel for {', '.join(on_cpu)} in {self.path.name} "
                            f"(those layers would run on the CPU): not a GPU verdict")

    def configure(self, options) -> None:
        if not vulkan_drivers() or self._ncnn.get_gpu_count() == 0:
            raise MissingSystemPartError("a Vulkan device (Mesa's software one, lavapipe: mesa-vulkan-drivers)")
        super().configure(options)
        options.use_vulkan_compute = True

    def execution(self) -> dict:
        device = self._ncnn.get_gpu_device(0).info().device_name()
        return {"device": f"gpu (Vulkan: {device})", "float16_storage": self.fp16, "float16_arithmetic": self.fp16,
                "fully_on_gpu": True, "batch": "one image a call"}
