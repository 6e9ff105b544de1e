"""Verification: the reference an artifact must reproduce (`reference.py`: the PyTorch model and its numbers) and
the artifact's parity with it in the artifact's own runtime (`verify.py`, by `artifact.parity.judge`). It sits above
the runtimes and below export and the bench, which both verify through it. PyTorch is imported only to build a
reference, so a runtime-only install (`mnv4[runtime]`) verifies with the stored one."""
