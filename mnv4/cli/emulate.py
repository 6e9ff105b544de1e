"""`mnv4 emulate`: artifacts verified and measured on an emulated device's kernels."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..emulation.arm64 import DEFAULT_CPU
from ..errors import ParityFailed


def emulate(
    architecture: Annotated[str, typer.Argument(help="The architecture to emulate: arm64.")],
    artifacts: Annotated[list[Path] | None, typer.Argument(
        help="ONNX and TFLite artifacts, or folders of them, each with its manifest and stored reference.")] = None,
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", help="Where results.json, report.md, report.html and verify.json go.")]
    = Path("emulate-results"),
    cpu: Annotated[str, typer.Option(
        "--cpu", help="The core qemu emulates (a /proc/cpuinfo of it ships with mnv4).")] = DEFAULT_CPU,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Where the emulated Debian root and its wheels are built once and kept "
        "(default: $MNV4_CACHE/emulate, else ~/.cache/mnv4/emulate).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the output of the commands run in the root.")] = False,
):
    """Verify and bench ARTIFACTS on the ARM kernels of their runtimes, in an arm64 Debian root under qemu-user
    (root only; needs qemu-user-static, debootstrap and binfmt-support). Exit code 1 when an artifact fails its
    parity, XNNPACK did not run a TFLite graph, or an fp16 TFLite artifact did not compute in float16. Latency
    there is not representative of any ARM CPU; the numerics are the ARM kernels' own."""
    from ..bench.emulated import emulate as run_emulation

    emulation = run_emulation(architecture, artifacts or [], output_dir, cpu, root,
                              progress=lambda message: typer.echo(message, err=True), verbose=verbose)
    for run in emulation.runs:
        typer.echo(run.summary(), err=True)
    typer.echo(f"wrote {output_dir / 'results.json'}, report.md, report.html and verify.json: machine "
               f"{emulation.machine['id']} ({emulation.machine['note']})", err=True)
    problems = emulation.problems()
    if problems:
        raise ParityFailed(problems)
