"""What a manifest and a parity record say, as the lines `mnv4 export`, `verify` and `run` print: the verdict with
its evidence, what quantization did, where the operators went, and a prediction's top classes."""
from __future__ import annotations

import numpy as np

from .manifest import Manifest
from .parity import with_known_issue
from .precisions import FP32


def parity_line(parity: dict) -> str:
    """The verdict and its evidence: the worst numbers against PyTorch float32 and float64, what int8 was judged on,
    the fixture's accuracy (or why it was not measured) and where the reference came from."""
    if parity.get("passed") is None:
        return f"  parity: {parity['status']}"
    worst, truth = parity["worst"], parity.get("worst_float64")
    verdict = with_known_issue("PASS" if parity["passed"] else "FAIL: " + "; ".join(parity["failures"]), parity)
    evidence = (f"; against float64: artifact {truth['artifact']['rel_err']:.1e}, PyTorch fp32 "
                f"{truth['pytorch_fp32']['rel_err']:.1e}, top-1 {truth['artifact']['top1_agreement']:.0%}"
                if truth else "")
    if parity.get("thresholds", {}).get("photos_only"):
        photos = [value["photos"] for key, value in parity.items() if key.startswith("batch_")]
        evidence += (f"; judged on the photos: rel err {max(p['rel_err'] for p in photos):.2e}, cosine "
                     f"{min(p['cosine'] for p in photos):.6f}")
    task = parity.get("task")
    if not task and parity["tolerance"] != FP32.limits.name:
        evidence += "; accuracy not measured (for that, export mnv4's trained fixture: `mnv4 fixture`)"
    if task and "top1" in task:
        evidence += (f"; held-out top-1 on the {task['task']} {task['top1']['artifact']:.1%} (PyTorch fp32 "
                     f"{task['top1']['pytorch_fp32']:.1%})")
    elif task:
        evidence += f"; {task['task']} accuracy {task['status']}"
    if parity.get("reference_source"):
        evidence += f"; reference {parity['reference_source']}"
    return (f"  parity on {parity['inputs']['photos']} photos + {parity['inputs']['random']} random inputs: "
            f"rel err {worst['rel_err']:.2e}, max |d| {worst['max_abs']:.2e}, cosine {worst['cosine']:.6f}, "
            f"top-1 {worst['top1_agreement']:.0%}, top-5 {worst['top5_agreement']:.0%} vs PyTorch fp32"
            f"{evidence} -> {verdict}")


def runtime_lines(parity: dict) -> list[str]:
    """Where a verdict was reached, for a runtime other than a format's CPU one: what the runtime did with the
    artifact, and that its device here is a software one."""
    if not parity.get("emulated"):
        return []
    execution = parity.get("execution") or {}
    done = [f"{key.replace('_', ' ')} {value}" for key, value in execution.items() if not isinstance(value, bool)]
    done += [key.replace("_", " ") for key, value in execution.items() if value is True]
    done += [f"not {key.replace('_', ' ')}" for key, value in execution.items() if value is False]
    return [f"  runtime {parity['runtime']} on a software {parity['device'].upper()} (emulated here: its numerics and "
            f"operator coverage, not its speed)" + (f": {', '.join(done)}" if done else "")]


def shipped_runtime_lines(parity: dict) -> list[str]:
    """The verdicts of the runtimes an export was verified in besides its format's CPU one (`--runtime`)."""
    return [line for record in (parity.get("runtimes") or {}).values()
            for line in (*runtime_lines(record), parity_line(record))]


def quantization_lines(manifest: Manifest) -> list[str]:
    """What a quantized export did: its recipe, what it calibrated on, and which operators stayed float."""
    quantization = manifest.facts.get("quantization")
    if not quantization:
        return []
    lines = [f"  quantized: {quantization['recipe']}"]
    if manifest.calibration:
        lines.append(f"  calibrated on {manifest.calibration['count']} images: {manifest.calibration['source']}")
    float_ops = quantization.get("float_ops") or {}
    lines.append(f"  {quantization.get('quantized_ops', '?')} operators in int8; in float: "
                 + (", ".join(f"{name} x{count}" for name, count in float_ops.items()) or "none"))
    return lines


def delegation_lines(manifest: Manifest) -> list[str]:
    """Where the operators went: an ExecuTorch delegate's share and what stayed outside it, and what the runtime read
    of a program without running it; a Core ML program's compute units, target and what needs macOS."""
    facts = manifest.facts
    delegation = facts.get("delegation")
    if delegation:
        outside = delegation["non_delegated_ops"]
        lines = [f"  delegated to {delegation['delegate']}: {delegation['delegated_ops']}/{delegation['total_ops']} "
                 f"operators in {delegation['delegate_calls']} subgraph(s); outside: "
                 + (", ".join(f"{name} x{count}" for name, count in outside.items()) or "none")
                 + "".join(f"; {key.replace('_', ' ')} {facts[key]}" for key in ("compute_units", "minimum_deployment_target")
                           if key in facts)]
        structure = facts.get("structure_check")
        if structure:
            lines.append(f"  structure: {structure['status']}: methods {', '.join(structure['methods'])}; forward "
                         f"{structure['inputs'][0]} -> {structure['outputs'][0]}")
        return lines
    if "compute_plan" in facts:
        return [f"  Core ML: compute units {facts.get('compute_units') or 'not set (Core ML chooses: all)'}, minimum "
                f"deployment target {facts['minimum_deployment_target']}; compute plan {facts['compute_plan']}"]
    return []


def top_classes(logits, top: int, names: list[str] | None = None) -> list[str]:
    """One line per class, most probable first: rank, name (`names`, else "class N"), index, softmax %."""
    logits = np.asarray(logits, dtype=np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    return [f"{rank}. {names[index] if names else f'class {index}'} (index {index}): {probabilities[index] * 100:.2f}%"
            for rank, index in enumerate(np.argsort(-probabilities)[:top], start=1)]
