"""What an exporter says of the artifact it wrote, in one typed form for every format: its interface (input and
output names, layout, shapes, dtypes), the dtypes it stores and computes in, its toolchain's versions, and where it
was quantized or delegated, how. The manifest is built from it in one place (`ArtifactFacts.manifest_fields`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The one set of input and output names of every format that names them (ExecuTorch's are positional): normalised
# tensors in, or RGB pixels where the input is an image, and logits out.
INPUT_NAME = "pixels"
IMAGE_INPUT_NAME = "image"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Interface:
    """The artifact's one input and one output, as its runtime declares them."""

    input_name: str
    input_layout: str  # NCHW or NHWC
    input_shape: list[int]  # -1 where the batch axis is free
    input_dtype: str
    output_name: str | None  # None: the runtime's outputs have no names (ExecuTorch's are positional)
    output_dtype: str
    input_kind: str = "tensor"  # "image": RGB pixels (0 to 255), normalised inside the model
    input_quantization: dict | None = None  # an integer input's dtype, scale and zero point
    output_quantization: dict | None = None


@dataclass(frozen=True)
class Description:
    """What an app needs to use an artifact, written into it where its format has a place for that: the model, its
    classes' names, and the preprocessing its input expects. The manifest stays the full record."""

    variant: str
    resolution: int
    labels: list[str] | None  # None: the classes have no names (a model of another task, exported without --labels)
    preprocessing: dict  # crop_pct, interpolation, mean, std
    mnv4_version: str
    image_input: bool = False  # RGB pixels in, normalised inside the model

    @property
    def input_name(self) -> str:
        return IMAGE_INPUT_NAME if self.image_input else INPUT_NAME

    def preprocessing_text(self) -> str:
        p = self.preprocessing
        size = (f"resize the short side to {self.resolution} / {p['crop_pct']} ({p['interpolation']}), centre-crop "
                f"{self.resolution}x{self.resolution}")
        if self.image_input:
            return (f"{size}, RGB pixels 0 to 255 (the model subtracts mean {p['mean']} and divides by std {p['std']} "
                    f"of pixel / 255 itself)")
        return f"{size}, scale to [0, 1], subtract mean {p['mean']}, divide by std {p['std']} (RGB)"

    def input_text(self, dtype: str, layout: str) -> str:
        what = "RGB pixels" if self.image_input else "RGB images"
        return f"Input '{self.input_name}': {dtype} {layout} {what}, {self.preprocessing_text()}."

    def preprocessing_record(self, layout: str) -> dict:
        """The preprocessing as an app's code reads it (JSON in ONNX metadata, ExecuTorch constant methods, ...)."""
        return {"resolution": self.resolution, **self.preprocessing, "layout": layout,
                "scale": "0-255" if self.image_input else "0-1", "normalised_in_model": self.image_input}


@dataclass(frozen=True)
class Quantization:
    """What a quantizing export did, in one schema for every format."""

    recipe: str  # one line: the tool, its recipe, weights and activations
    tool: str  # the tool and its version
    weights: str
    activations: str | None  # None: weight-only (float activations)
    calibration: dict | None  # {"images": N, "method": ...} for calibrated activations; None: not calibrated
    quantized_op_types: dict[str, int]  # operators that compute in int8, by type
    float_ops: dict[str, int]  # operators that stay float, by type
    float_ops_rule: str  # what counts as computing in int8 in this format
    details: dict = field(default_factory=dict)  # what only this format records

    @property
    def quantized_ops(self) -> int:
        return sum(self.quantized_op_types.values())

    def as_dict(self) -> dict:
        record = asdict(self)
        return {**record, "quantized_ops": self.quantized_ops,
                "quantized_op_types": dict(sorted(self.quantized_op_types.items())),
                "float_ops": dict(sorted(self.float_ops.items()))}


@dataclass(frozen=True)
class Delegation:
    """How many operators a delegate runs, in how many calls, and which ones it leaves outside."""

    delegate: str
    delegated_ops: int
    total_ops: int
    non_delegated_ops: dict[str, int]
    delegate_calls: int


@dataclass(frozen=True)
class ArtifactFacts:
    interface: Interface
    weights_dtype: str
    compute_dtype: str  # what the arithmetic is in (float16 for XNNPACK's and Core ML's fp16); decides the limits
    toolchain: dict[str, str]  # package -> version, for the manifest's versions
    quantization: Quantization | None = None
    delegation: Delegation | None = None
    details: dict = field(default_factory=dict)  # what only this format records (opset, backend, max batch, ...)

    def manifest_fields(self) -> dict:
        """The manifest's keys that come from the exporter, flat: the interface, the dtypes, then the rest."""
        fields = {key: value for key, value in asdict(self.interface).items() if value is not None}
        fields.update(weights_dtype=self.weights_dtype, compute_dtype=self.compute_dtype)
        if self.quantization is not None:
            fields["quantization"] = self.quantization.as_dict()
        if self.delegation is not None:
            fields["delegation"] = asdict(self.delegation)
        return {**fields, **self.details}
