"""Core ML runners for .mlpackage artifacts: Core ML's own MLModel.predict on macOS, and elsewhere the
ML-program interpreter (coreml_program.py), which executes the same saved program with PyTorch kernels.

`CoreMLRunner`, the runner `load` gives for an .mlpackage, is the platform's: predict where Core ML
exists, the interpreter everywhere else."""
from __future__ import annotations

import platform
import sys
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact.parity import compare
from ..errors import MissingExtraError, MNV4Error, PlatformUnsupportedError
from .base import Runner, run_in_artifact_batches

# The exporter's record of --compute-units in the model's user-defined metadata (Core ML applies compute units
# at load, not at conversion), so that the predict runner honours them with or without the manifest.
COMPUTE_UNITS_METADATA = "mnv4.compute_units"


@dataclass(frozen=True)
class Interface:
    """What the model description says about the artifact's one input, its logits output and, for a classifier, its
    class label and probabilities outputs."""

    input_name: str
    image_input: bool
    output_name: str  # the logits (the one multi-array output)
    artifact_batch: int | None  # None: a dynamic batch
    input_size: tuple[int, int, int]  # (channels, height, width)
    label_output: str | None = None  # None: no classifier
    probabilities_output: str | None = None


@dataclass(frozen=True)
class Classification:
    """A classifier's answer for one image: the top class's name and every class's probability by name."""

    label: str
    probabilities: dict[str, float]


def read_interface(spec) -> Interface:
    description = spec.description
    model_input = description.input[0]
    arrays = [output.name for output in description.output if output.type.WhichOneof("Type") == "multiArrayType"]
    if not arrays:
        raise MNV4Error(f"the model's outputs ({', '.join(output.name for output in description.output)}) hold no "
                        f"multi-array of logits")
    classifier = {"label_output": description.predictedFeatureName or None,
                  "probabilities_output": description.predictedProbabilitiesName or None}
    if model_input.type.WhichOneof("Type") == "imageType":  # one image
        image = model_input.type.imageType
        return Interface(model_input.name, True, arrays[0], 1, (3, int(image.height), int(image.width)), **classifier)
    array = model_input.type.multiArrayType
    # A RangeDim batch shows as a size range; a fixed batch only as the shape.
    batch_range = array.shapeRange.sizeRanges[0] if array.shapeRange.sizeRanges else None
    dynamic = batch_range is not None and batch_range.upperBound != batch_range.lowerBound
    return Interface(model_input.name, False, arrays[0], None if dynamic else int(array.shape[0]),
                     tuple(int(size) for size in array.shape[1:4]), **classifier)


class _CoreMLRunner(Runner):
    """What both Core ML runners give: logits (`run`, which parity judges) and, for a classifier, its class names and
    probabilities (`classify`)."""

    interface: Interface

    def classify(self, batch: np.ndarray) -> list[Classification]:
        """Each image's top class name and every class's probability, as the classifier's own outputs give them (the
        softmax inside the program, what Vision reports); one prediction per image, as a classifier takes."""
        label, probabilities = self.interface.label_output, self.interface.probabilities_output
        if label is None or probabilities is None:
            raise MNV4Error(f"{self.path.name} is no classifier (it was exported without class names, or for more "
                            f"than one image at a time): its output is {self.interface.output_name} alone")
        batch = self.checked(batch)
        results = [self._outputs(batch[index:index + 1]) for index in range(len(batch))]
        return [Classification(str(result[label]), {str(name): float(p) for name, p in result[probabilities].items()})
                for result in results]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, "NCHW", np.float32, self.interface.artifact_batch, self._logits)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._outputs(batch)[self.interface.output_name], np.float32)

    @abstractmethod
    def _outputs(self, batch: np.ndarray) -> dict:
        """Every output of one prediction on `batch` (normalised NCHW float32, the artifact's batch), by name."""


class CoreMLPredictRunner(_CoreMLRunner):
    """An .mlpackage with a tensor input in Core ML, on the compute units `compute_units` names, else those the
    export recorded in the model (--compute-units), else on the CPU alone, so that float32 stays float32 (the
    GPU and Neural Engine compute in float16) and numbers compare with the other CPU runtimes.
    Core ML schedules its own threads: `threads` is recorded, not applied."""

    runtime = "coreml"

    def __init__(self, path: str | Path, threads: int = 1, compute_units: str | None = None):
        super().__init__(path, threads)
        # Checked first: installing coremltools would not help on another OS.
        if sys.platform != "darwin":
            raise PlatformUnsupportedError(
                f"Core ML predictions need macOS; on {platform.system()} the Core ML program interpreter "
                f"(CoreMLProgramRunner) runs the .mlpackage instead")
        try:
            import coremltools as ct
        except ImportError:
            raise MissingExtraError("Core ML", "coreml") from None
        recorded = ct.utils.load_spec(str(self.path)).description.metadata.userDefined.get(COMPUTE_UNITS_METADATA)
        self.compute_units = compute_units or recorded or "cpu_only"
        self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit[self.compute_units.upper()])
        self.interface = read_interface(self.model.get_spec())
        self.input_size = self.interface.input_size
        if self.interface.image_input:
            raise MNV4Error(f"{self.path.name} takes an image, not the normalised NCHW tensors a runner is given; "
                            f"export it with a tensor input to run it in Core ML")

    def _outputs(self, batch: np.ndarray) -> dict:
        with self.running():
            return self.model.predict({self.interface.input_name: batch})


class CoreMLProgramRunner(_CoreMLRunner):
    """The .mlpackage's ML program executed by mnv4's interpreter on the CPU, with `threads` PyTorch
    threads, at the precision the program declares (an fp16 program in float16, see coreml_program.py).

    Its numbers are Core ML's; its speed is not (`measures_latency` is False). An image-input program is fed the
    pixels that the normalised batch came from (Runner.image_input); the program's own scale and bias then normalise
    them again, so that parity covers the image preprocessing too."""

    runtime = "coreml-interpreter"
    measures_latency = False

    def __init__(self, path: str | Path, threads: int = 1):
        super().__init__(path, threads)
        from .coreml_program import Program

        self.program = Program(self.path)
        self.interface = read_interface(self.program.spec)
        self.input_size = self.interface.input_size
        self.image_input = self.interface.image_input

    def _outputs(self, batch: np.ndarray) -> dict:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with self.running():
                outputs = self.program.run({self.interface.input_name: torch.from_numpy(batch)})
        finally:
            torch.set_num_threads(previous)
        # Tensors as numpy, as Core ML's predict gives them; the classifier's label and dictionary as they are.
        return {name: value.float().numpy() if isinstance(value, torch.Tensor) else value
                for name, value in outputs.items()}


CoreMLRunner = CoreMLPredictRunner if sys.platform == "darwin" else CoreMLProgramRunner


def compare_with_predict(path: str | Path, inputs: np.ndarray, threads: int = 1):
    """The interpreter against Core ML's own predict on the same NCHW inputs (macOS only): the Parity of
    the interpreter's logits with predict's as the reference."""
    predict = CoreMLPredictRunner(path, threads)  # refuses first off macOS
    return compare(predict(inputs), CoreMLProgramRunner(path, threads)(inputs))
