"""Parity of an artifact's logits with the PyTorch reference: the metrics and the pass/fail rule.

Knows nothing of formats or runtimes: it sees the candidate through the Runner interface and the PyTorch model
through its stored numbers (`reference.Reference`), so that it needs no PyTorch."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..cpu import summary as cpu_summary
from ..data import Preprocessing, photo_batch
from ..errors import MNV4Error
from .precisions import Limits
from .reference import Reference, TaskReference

# The truth is the model evaluated in float64. PyTorch float32 is itself an approximation of it, and on an
# ill-conditioned input (random pixels through a hybrid's attention, a checkpoint with large activations) it
# can be 1e-2 or more away. So an artifact passes an input where its error against float64 is within the
# limit, or within TRUTH_FACTOR times PyTorch float32's own error against float64 on that input: as accurate
# as the reference, if not close to it. An ONNX artifact of such a hybrid_medium checkpoint, whose errors are
# of float32 rounding alone, came within 0.6x to 1.9x of PyTorch float32's error on every input.
TRUTH_FACTOR = 4.0
RANDOM_INPUTS = 2
# On mnv4's trained fixture a reduced-precision artifact may cost at most this much held-out top-1 accuracy
# against PyTorch float32, by default (`--max-accuracy-loss`).
MAX_TOP1_LOSS_POINTS = 1.0
TASK_BATCH = 64  # held-out images per call
# A dynamic-batch artifact is verified at two batches: one image, and several at once.
DYNAMIC_VERIFY_BATCHES = (1, 4)


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs: float
    rel_err: float  # max |candidate - reference| / max |reference|
    cosine: float  # the lowest per-image cosine similarity of the logit vectors
    top1_agreement: float
    top5_agreement: float

    def as_dict(self) -> dict:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    delta = np.abs(candidate - reference)
    cosine = _cosines(reference, candidate)
    k = min(5, reference.shape[1])
    top_reference = np.argsort(-reference, axis=1)[:, :k]
    top_candidate = np.argsort(-candidate, axis=1)[:, :k]
    top5 = [set(a) == set(b) for a, b in zip(top_reference, top_candidate)]
    return Parity(
        images=len(reference),
        max_abs=float(delta.max()),
        rel_err=float(delta.max() / max(np.abs(reference).max(), 1e-30)),
        cosine=float(cosine.min()),
        top1_agreement=float(np.mean(top_reference[:, 0] == top_candidate[:, 0])),
        top5_agreement=float(np.mean(top5)),
    )


def breaches(parity: Parity, limits: Limits) -> list[str]:
    """What exceeds the limits, each saying by how much; empty when parity holds."""
    found = []
    # Written as "not within" so that NaN (from NaN or infinite logits) fails instead of passing.
    if not parity.rel_err <= limits.rel_err:
        found.append(_rel_err_breach(parity.rel_err, limits.rel_err))
    if limits.cosine is not None and not parity.cosine >= limits.cosine:
        found.append(f"cosine {parity.cosine:.6f} < {limits.cosine}")
    return found


def _rel_err_breach(rel_err: float, limit: float) -> str:
    return f"relative error {rel_err:.3g} > {limit:g} " + (
        f"({rel_err / limit:.1f}x the limit)" if np.isfinite(rel_err) else "(the artifact's logits are not finite)")


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The cosine similarity of each input's two logit vectors (float64 arrays); NaN where one is not finite."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    with np.errstate(invalid="ignore"):
        return (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-30)


def _per_input(truth: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each input's relative error (max |d| / max |truth|) and cosine distance (1 - cosine)."""
    truth, candidate = truth.astype(np.float64), candidate.astype(np.float64)
    rel_err = np.abs(candidate - truth).max(axis=1) / np.maximum(np.abs(truth).max(axis=1), 1e-30)
    return rel_err, 1.0 - _cosines(truth, candidate)


def truth_breaches(truth: np.ndarray, reference: np.ndarray, candidate: np.ndarray, limits: Limits,
                   photos: int) -> list[str]:
    """What fails against the float64 truth, input by input (see TRUTH_FACTOR); empty when parity holds.
    `reference` is PyTorch float32's logits on the same inputs, whose own error sets what is attainable."""
    rel_err, distance = _per_input(truth, candidate)
    own_rel_err, own_distance = _per_input(truth, reference)
    checks = [("relative error", rel_err, own_rel_err, limits.rel_err)]
    if limits.cosine is not None:
        checks.append(("cosine distance", distance, own_distance, 1.0 - limits.cosine))
    found = []
    for name, error, own, limit in checks:
        failing = ~((error <= limit) | (error <= TRUTH_FACTOR * own))  # NaN fails
        if limits.photos_only:
            failing[photos:] = False
        if not failing.any():
            continue
        worst = int(np.flatnonzero(failing)[np.argmax(np.nan_to_num(error[failing], nan=np.inf))])
        where = f"on {'photo' if worst < photos else 'random input'} {worst}"
        if name == "relative error":
            found.append(f"{_rel_err_breach(float(error[worst]), limit)} {where} against float64, where PyTorch "
                         f"float32's own is {own[worst]:.2g}")
        else:
            found.append(f"cosine {1 - error[worst]:.6f} < {1 - limit:g} {where} against float64, where PyTorch "
                         f"float32's own is {1 - own[worst]:.6f}")
    return found


def verification_inputs(preprocessing: Preprocessing, seed: int = 0) -> np.ndarray:
    """The real photos with the model's eval transform, then random-pixel images normalised the same way.

    Random pixels rather than N(0, 1) tensors: unit-variance noise on every channel lies far outside what
    the normalisation produces and drives attention scores into the thousands, where float rounding alone
    decides the softmax and no two correct runtimes agree."""
    photos = photo_batch(preprocessing)
    pixels = np.random.default_rng(seed).uniform(0.0, 1.0, (RANDOM_INPUTS, *photos.shape[1:]))
    mean = np.asarray(preprocessing.mean).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std).reshape(1, 3, 1, 1)
    return np.concatenate([photos, ((pixels - mean) / std).astype(np.float32)])


def run_batched(runner, inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def judge(reference: Reference, candidate, limits: Limits, batch_sizes: tuple[int, ...],
          max_loss_points: float = MAX_TOP1_LOSS_POINTS) -> dict:
    """Run the candidate on the reference's inputs at each batch size and judge it against the float64 truth,
    given PyTorch float32's own error; for a trained model, also its held-out accuracy against PyTorch float32's,
    of which it may lose at most `max_loss_points`.
    The record keeps both views: against PyTorch float32 ("all", "photos", "worst") and against float64."""
    inputs, photo_count = reference.inputs, reference.photos
    expected, exact = reference.pytorch_fp32, reference.float64
    results, verdicts = {}, []
    for batch in batch_sizes:
        actual = run_batched(candidate, inputs, batch)
        check_classes(expected, actual)
        overall = compare(expected, actual)
        against_truth = truth_record(exact, expected, actual)
        results[f"batch_{batch}"] = {"all": overall.as_dict(),
                                    "photos": compare(expected[:photo_count], actual[:photo_count]).as_dict(),
                                    "float64": against_truth}
        failures = truth_breaches(exact, expected, actual, limits, photo_count)
        verdicts.append((bool(failures), against_truth["artifact"]["rel_err"], failures, overall, against_truth))
    # The batch that decides: a failing one before a passing one, then the larger error against float64.
    _, _, failures, worst, worst_truth = max(verdicts, key=lambda v: (v[0], np.nan_to_num(v[1], nan=np.inf)))
    record = {"passed": not failures, "failures": failures, "tolerance": limits.name, "thresholds": limits.as_dict(),
              "cpu": cpu_summary(),  # reduced precision's numbers depend on it (int8 dot products, native float16)
              "truth": {"reference": "PyTorch float64", "factor": TRUTH_FACTOR},
              "inputs": {"photos": photo_count, "random": len(inputs) - photo_count}, "worst": worst.as_dict(),
              "worst_float64": worst_truth, **results}
    task = task_verdict(reference, lambda: run_batched(candidate, reference.task.images, TASK_BATCH), max_loss_points)
    if task:
        record["task"] = task
        if task.get("passed") is False:
            record["passed"] = False
            record["failures"].append(task["failure"])
    return record


def row_parity(reference: Reference, logits: np.ndarray, limits: Limits, task_logits: np.ndarray | None,
               max_loss_points: float = MAX_TOP1_LOSS_POINTS) -> dict:
    """A benchmark row's parity: its `logits` on the reference's inputs (and `task_logits` on its held-out
    images) judged by the rule of `judge`, in the row's compact record."""
    check_classes(reference.pytorch_fp32, logits)
    failures = truth_breaches(reference.float64, reference.pytorch_fp32, logits, limits, reference.photos)
    parity = {**compare(reference.pytorch_fp32, logits).as_dict(), "tolerance": limits.name,
              "float64": truth_record(reference.float64, reference.pytorch_fp32, logits)}
    task = task_verdict(reference, lambda: task_logits, max_loss_points)
    if task:
        parity["task"] = task
        failures += [task["failure"]] if task.get("passed") is False else []
    return {**parity, "passed": not failures, "failures": failures}


def with_known_issue(text: str, record: dict) -> str:
    """A verdict or its failures, followed by the known upstream issue of the runtime that reached it, where the record
    names one."""
    return text + (f" ({record['known_issue']})" if record.get("known_issue") else "")


def check_classes(expected: np.ndarray, actual: np.ndarray) -> None:
    """An artifact of another number of classes than its reference's is not the artifact of that reference."""
    if actual.shape != expected.shape:
        raise MNV4Error(f"the artifact gives {actual.shape[-1]} logits per image where its reference has "
                        f"{expected.shape[-1]}: it is not the artifact this manifest and reference describe")


def task_verdict(reference: Reference, task_logits: Callable[[], np.ndarray], max_loss_points: float) -> dict | None:
    """The task record of a reference's model: why its accuracy is not measured, or the candidate's held-out
    top-1 (from `task_logits()`) against PyTorch float32's; None for a model with no task."""
    if reference.task_not_measured:
        return reference.task_not_measured
    return task_record(task_logits(), reference.task, max_loss_points) if reference.task else None


def task_record(logits: np.ndarray, task: TaskReference, max_loss_points: float = MAX_TOP1_LOSS_POINTS) -> dict:
    """Held-out top-1 of a candidate's `logits` and of PyTorch float32's on the task, their top-1 agreement,
    and whether the candidate lost more than `max_loss_points` of accuracy."""
    accuracy, reference_accuracy = top1(logits, task.labels), top1(task.pytorch_fp32, task.labels)
    loss = (reference_accuracy - accuracy) * 100
    record = {"task": task.name, "held_out": len(task.labels), "resolution": task.images.shape[-1],
              "top1": {"artifact": accuracy, "pytorch_fp32": reference_accuracy},
              "top1_agreement_with_fp32": float((logits.argmax(1) == task.pytorch_fp32.argmax(1)).mean()),
              "top1_loss_points": round(loss, 2), "max_top1_loss_points": max_loss_points,
              "passed": bool(loss <= max_loss_points)}
    if not record["passed"]:
        record["failure"] = (f"held-out top-1 on the {task.name} {accuracy:.1%} against PyTorch float32's "
                             f"{reference_accuracy:.1%}: {loss:.1f} points lost > {max_loss_points:g}")
    return record


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def truth_record(exact: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> dict:
    """The artifact's and PyTorch float32's parity against float64, side by side."""
    return {"artifact": compare(exact, candidate).as_dict(), "pytorch_fp32": compare(exact, reference).as_dict()}
