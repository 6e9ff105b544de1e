"""`mnv4 web`: a page that classifies images with artifacts in the browser."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .common import AllowModified, warn


def web(
    artifacts: Annotated[list[Path], typer.Argument(
        help="ONNX and TFLite artifacts, each with its manifest beside it.")],
    port: Annotated[int, typer.Option(
        "--port", "-p", min=0, max=65535, help="The port on 127.0.0.1 (0: any free one).")] = 0,
    allow_modified: AllowModified = False,
):
    """Serve a page that classifies an image with ARTIFACTS in the browser (ONNX Runtime Web and LiteRT.js: WebAssembly,
    WebGPU, WebGL), with mnv4's preprocessing, until Ctrl-C. Everything it loads comes from this machine: it works
    offline."""
    from ..artifact.manifest import read_manifest, unchanged
    from ..runtimes.browser import serve

    for artifact in artifacts:
        warn(unchanged(artifact, read_manifest(artifact, allow_modified), allow_modified))
    with serve(artifacts, port=port, allow_modified=allow_modified) as url:
        typer.echo(f"serving {len(artifacts)} artifact{'s' if len(artifacts) > 1 else ''} at {url}/ (Ctrl-C to stop)")
        while True:
            time.sleep(3600)
