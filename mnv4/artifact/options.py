"""The one table of export options: what each option is, which formats (delegates, precisions) take it, its values
or bounds. `check` refuses, before any work and in one line, every request the table does not allow; an exporter
never checks its options again. A new option of one format is one row here, its typed field in ArtifactOptions (or
ExportRequest, for what does not shape the artifact) and that exporter's code; the CLI's flag and help come from the row.

`ArtifactOptions` are the options that shape an artifact, which an exporter is handed; `ExportRequest` adds what a
user asks besides (the model, its verification, its records)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MNV4Error, UnsupportedOptionError, unknown_value
from .formats import FORMATS, Delegate, get_format
from .parity import MAX_TOP1_LOSS_POINTS
from .precisions import ARTIFACT_PRECISIONS, CALIBRATED, FP16, FP32, INT8, INT8_WEIGHTS, PRECISIONS, Precision

MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024  # beyond 1024 px an export needs more memory than a laptop has
MAX_BATCH = 1024  # also the largest batch of a dynamic-batch artifact
MAX_THREADS = 256
MAX_CALIBRATION_IMAGES = 2048
MAX_CLASSES = 100_000  # of a model and of the manifest of its artifact

# Core ML's load-time choice of hardware (coremltools' ct.ComputeUnit, lower-cased), and the deployment targets whose
# programs are ML programs, each with the Core ML specification version its programs get.
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
DEPLOYMENT_TARGETS = {"iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9, "iOS26": 10,
                      "macOS12": 6, "macOS13": 7, "macOS14": 8, "macOS15": 9, "macOS26": 10}
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
# The oldest target of a precision's Core ML operations: int8-weights' constexpr dequantization (iOS 16), int8's
# activation quantize/dequantize (iOS 17).
OLDEST_DEPLOYMENT_TARGET = {INT8_WEIGHTS.name: "iOS16", INT8.name: "iOS17"}
# The CPUs an ORT file is optimized for (onnxruntime's convert_onnx_models_to_ort --target_platform): arm by default,
# for phones. amd64 bakes in x86-only NCHWc operators; the tool's own default (no target) does not, but neither does it
# fuse int8-activation QDQ pairs into integer operators, as arm does.
TARGET_PLATFORMS = ("arm", "amd64")
DEFAULT_TARGET_PLATFORM = "arm"


@dataclass(frozen=True)
class Taker:
    """A kind of artifact that takes an option: a format, only with some of its delegates or at some precisions
    where those are given."""

    format: str
    delegates: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()

    def takes(self, fmt: str, delegate: Delegate | None, precision: str) -> bool:
        return (fmt == self.format and (not self.delegates or (delegate is not None and delegate.name in self.delegates))
                and (not self.precisions or precision in self.precisions))

    def __str__(self) -> str:
        return " ".join([self.format, *(["--delegate " + "|".join(self.delegates)] if self.delegates else []),
                         *(["--precision " + "|".join(self.precisions)] if self.precisions else [])])


@dataclass(frozen=True)
class Option:
    name: str  # the field of ExportRequest it sets; the flag is --name-with-dashes
    help: str
    takers: tuple[Taker, ...] = ()  # the formats that take it; () every format
    precisions: tuple[str, ...] = ()  # the precisions it goes with, in every format; () all
    choices: tuple[str, ...] = ()  # its values, where they are a fixed set
    bounds: tuple[float, float] | None = None  # its smallest and largest value, where it is a number
    note: str = ""  # said after a refusal: why, or what to do instead
    aliases: tuple[str, ...] = ()  # short flags: -b

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The help of the CLI's flag: what it does, and who takes it."""
        who = self._takers()
        return self.help + (f" For {listed(who)}." if who else "")

    def check_value(self, value) -> None:
        """Refuse a value out of the option's values or bounds (NaN is out of every bound); each of a repeated one."""
        if isinstance(value, (list, tuple)):
            for each in value:
                self.check_value(each)
            return
        if self.bounds is not None and value is not None and not self.bounds[0] <= value <= self.bounds[1]:
            raise MNV4Error(f"{self.flag} must be from {self.bounds[0]:g} to {self.bounds[1]:g}, got {value:g}")
        if self.choices and value is not None and value not in self.choices:
            raise MNV4Error(unknown_value(self.flag, value, self.choices))

    def check_taken(self, value, fmt: str, delegate: Delegate | None, precision: str) -> None:
        """Refuse the option given where no row of it takes it."""
        if value in (None, False, [], ()):
            return
        if not any(taker.takes(fmt, delegate, precision) for taker in self.takers or (Taker(fmt),)) or \
                (self.precisions and precision not in self.precisions):
            raise UnsupportedOptionError(f"{self.flag} is for {listed(self._takers())}, not "
                                         f"{self._target(fmt, delegate, precision)}" + (f": {self.note}" if self.note else ""))

    def _takers(self) -> list[str]:
        return [str(taker) for taker in self.takers] + [f"--precision {'|'.join(self.precisions)}"] * bool(self.precisions)

    def _target(self, fmt: str, delegate: Delegate | None, precision: str) -> str:
        """What the request is, as far as this option cares."""
        parts = [fmt] if self.takers else []
        parts += [f"--delegate {delegate.name}"] if delegate is not None and self.takers else []
        parts += [f"--precision {precision}"] if self.precisions or any(t.precisions for t in self.takers) else []
        return " ".join(parts)


_COREML_PROGRAMS = (Taker("coreml"), Taker("executorch", delegates=("coreml",)))
# The runtimes users ship to beyond each format's CPU one (its first), which always verifies an export.
_SHIPPED_RUNTIMES = tuple(name for row in FORMATS.values() for name in row.runtimes[1:])

OPTIONS: dict[str, Option] = {row.name: row for row in (
    Option("precision", "; ".join(f"{name}: {PRECISIONS[name].summary}" for name in ARTIFACT_PRECISIONS) + ".",
           choices=ARTIFACT_PRECISIONS, aliases=("-p",)),
    Option("resolution", "Input resolution (default: the variant's).", bounds=(MIN_RESOLUTION, MAX_RESOLUTION),
           aliases=("-r",)),
    Option("batch", "Fixed batch size of the artifact.", bounds=(1, MAX_BATCH), aliases=("-b",)),
    # ExecuTorch 1.5.1 int8: once an XNNPACK int8 program with a spatial mean has run a batch of 4 or more, a larger
    # batch gives wrong logits or corrupts the heap (its float32 twin resizes fine).
    Option("dynamic_batch", "Leave the batch axis free.",
           takers=(Taker("onnx"), Taker("ort"), Taker("tflite"),
                   Taker("executorch", ("xnnpack",), (FP32.name, FP16.name)), Taker("coreml"),
                   Taker("openvino")),
           note="export a fixed --batch (ExecuTorch's XNNPACK int8 computes wrong logits when the batch grows; its "
                "other delegates plan one batch)"),
    Option("nhwc", "Channels-last (NHWC) input, as camera frames and TFLite kernels lay it out.",
           takers=(Taker("tflite"), Taker("executorch")), note="the other formats take NCHW"),
    Option("image_input", "An RGB image input named 'image', normalised inside the model (batch 1): NHWC pixels 0 to "
           "255 (float32; uint8 with --int8-io), or Core ML's image type."),
    Option("int8_io", "int8 input and output tensors (NPUs, Edge TPU).", takers=(Taker("tflite", precisions=(INT8.name,)),)),
    Option("calibration", "A directory of images to calibrate on (default: built-in photos, never the verification "
           "ones; the trained fixture's own training digits).", precisions=CALIBRATED),
    Option("calibration_count", "How many calibration images (default: up to 64, spread over DIR).",
           precisions=CALIBRATED, bounds=(1, MAX_CALIBRATION_IMAGES)),
    Option("delegate", "The backend the program's operators go to (default xnnpack); only XNNPACK runs here, the "
           "others are lowered and checked but not executed.", takers=(Taker("executorch"),),
           choices=FORMATS["executorch"].delegates),
    Option("opset", "The ONNX opset to write (default 20; 18 reaches older runtimes, newer ones take newer).",
           takers=(Taker("onnx"), Taker("ort")), bounds=(18, 24)),
    Option("target_platform", f"The CPU the ORT file is optimized for (default {DEFAULT_TARGET_PLATFORM}: phones; "
           "amd64 bakes in x86-only operators).", takers=(Taker("ort"),), choices=TARGET_PLATFORMS),
    Option("compute_units", "The hardware Core ML may run the program on.", takers=_COREML_PROGRAMS, choices=COMPUTE_UNITS),
    Option("minimum_deployment_target", f"The oldest OS that runs the program (default {DEFAULT_DEPLOYMENT_TARGET}).",
           takers=_COREML_PROGRAMS, choices=tuple(DEPLOYMENT_TARGETS)),
    Option("threads", "Runtime threads used for verification.", bounds=(1, MAX_THREADS)),
    Option("runtime", "Verify the artifact here too, where users ship it (repeatable; recorded in the manifest): "
           + "; ".join(f"{row.label}: {', '.join(row.runtimes[1:])}" for row in FORMATS.values() if row.runtimes[1:])
           + ".", takers=tuple(Taker(name) for name, row in FORMATS.items() if row.runtimes[1:]),
           choices=_SHIPPED_RUNTIMES),
    Option("max_accuracy_loss", "Points of held-out top-1 an artifact of the trained fixture may lose against PyTorch "
           "float32.", bounds=(0, 100)),
)}


@dataclass(frozen=True, kw_only=True)
class ArtifactOptions:
    """The options that shape an artifact, as asked: what an exporter acts on, once `check` has passed them (an
    exporter checks nothing again). Each is a row of OPTIONS."""

    precision: str = FP32.name
    batch: int = 1  # a fixed batch (the exporter sees it as its example's)
    dynamic_batch: bool = False
    nhwc: bool = False
    image_input: bool = False  # RGB pixels, normalised inside the model
    int8_io: bool = False
    delegate: str | None = None  # None: the format's default
    opset: int | None = None  # None: the ONNX exporter's default
    target_platform: str | None = None  # None: DEFAULT_TARGET_PLATFORM
    compute_units: str | None = None
    minimum_deployment_target: str | None = None

    @property
    def precision_row(self) -> Precision:
        return PRECISIONS[self.precision]

    @property
    def channels_last(self) -> bool:
        """The input is NHWC: asked for (--nhwc), or pixels of an image input normalised in the graph."""
        return self.nhwc or self.image_input


@dataclass(frozen=True)
class ExportRequest(ArtifactOptions):
    """What a user asks of an export: the artifact's options, and the model, its verification and its records.
    `check` checks every field the option table names."""

    variant: str
    weights: Path | None = None
    resolution: int | None = None
    verify: bool = True
    threads: int = 1
    runtime: list[str] | None = None  # where it is verified besides its format's CPU runtime
    labels: Path | None = None  # class names, one per line, for the manifest
    calibration: Path | None = None  # a directory of calibration images (default: built-in photos)
    calibration_count: int | None = None  # how many calibration images (default: up to DEFAULT_COUNT)
    max_accuracy_loss: float = MAX_TOP1_LOSS_POINTS  # the trained fixture's allowed top-1 loss, in points


def check(fmt: str, request: ExportRequest) -> None:
    """Every option of `request` checked against the tables for format `fmt`, before any work."""
    row = get_format(fmt)
    for option in OPTIONS.values():  # the values first: they make the rest meaningful
        option.check_value(getattr(request, option.name))
    precision = request.precision
    delegate = row.delegate_of(request.delegate)
    if delegate is not None:
        delegate.check_sdk()  # first: without the SDK nothing else about a delegate matters
    supported = row.precisions_of(delegate)
    if precision not in supported:
        where = row.label + (f" --delegate {delegate.name}" if request.delegate else " export")
        raise UnsupportedOptionError(f"{where} supports precision {listed(supported, 'or')}, not {precision!r}")
    for option in OPTIONS.values():
        option.check_taken(getattr(request, option.name), fmt, delegate, precision)
    if row.one_image and request.batch != 1:
        raise UnsupportedOptionError(f"{row.label} runs one image at a time (its input has no batch axis): export "
                                     f"--batch 1, not {request.batch}")
    for name in request.runtime or ():
        row.runtime_named(name)
    for rule in _RULES:
        rule(request, precision)


def listed(names, last: str = "and") -> str:
    """"a, b and c" (or another last word)."""
    names = list(names)
    return f" {last} ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _one_image(request: ExportRequest, precision: str) -> None:
    if request.image_input and (request.dynamic_batch or request.batch != 1):
        raise UnsupportedOptionError("--image-input is one image per prediction: export --batch 1, or a tensor "
                                     "input for other batches")
    if request.image_input and request.nhwc:
        raise UnsupportedOptionError("--image-input takes NHWC pixels already: drop --nhwc")


def _new_enough_target(request: ExportRequest, precision: str) -> None:
    oldest, target = OLDEST_DEPLOYMENT_TARGET.get(precision), request.minimum_deployment_target
    if oldest and target and DEPLOYMENT_TARGETS[target] < DEPLOYMENT_TARGETS[oldest]:
        equivalent = [name for name, version in DEPLOYMENT_TARGETS.items()
                      if version == DEPLOYMENT_TARGETS[oldest] and name != oldest]
        raise UnsupportedOptionError(f"Core ML {precision} needs --minimum-deployment-target {oldest} "
                                     f"({'/'.join(equivalent)}) or later, not {target}")


# What no single row can say: how options go together.
_RULES = (_one_image, _new_enough_target)
