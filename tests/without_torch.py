"""Run `mnv4 ARGS...` as the runtime-only install (`mnv4[runtime]`) would: every package that install lacks is
made unimportable, in this process and in the bench's worker processes (through PYTHONPATH), so that a test
proves the command needs none of them."""
import importlib.abc
import os
import sys

# What mnv4[runtime] does not install: PyTorch and everything built on it, the exporters' toolchains and the
# packages that ship the photos and digits a reference is computed from.
ABSENT = ("torch", "torchvision", "executorch", "litert_torch", "ai_edge_torch", "ai_edge_quantizer", "coremltools",
          "onnx", "onnxscript", "timm", "safetensors", "skimage", "sklearn", "huggingface_hub", "matplotlib")


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def install() -> None:
    sys.meta_path.insert(0, Absent())


if __name__ == "__main__":
    install()
    # The bench's workers are fresh interpreters: they start through this file too (see sitecustomize.py).
    os.environ["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "without_torch_site"),
                                                os.environ.get("PYTHONPATH", "")])
    from mnv4.cli import main

    sys.exit(main(sys.argv[1:]))
