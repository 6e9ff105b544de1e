"""Export: one module per format (onnx, tflite, executorch, coreml) behind one pipeline that writes the
artifact, verifies it in its own runtime (verify.py) and publishes it with its manifest (pipeline.py)."""
from .pipeline import ExportRequest, VerificationFailed, check_request, default_output, export
from .verify import reference_model, verify_artifact, verify_manifest

__all__ = ["ExportRequest", "VerificationFailed", "check_request", "default_output", "export", "reference_model",
           "verify_artifact", "verify_manifest"]
