"""`jetmoe validate`: the same cases through every available backend, compared with eager fp32.

    report = validate_export("ckpt", onnx="out/model.onnx")
    print(report.table()); report.save("report.json"); sys.exit(0 if report else 1)

The reference runs first and only its outputs are kept: for a causal LM it is computed layer-major from the stored
weights (validate/reference.py: one fp32 layer in memory, so it runs at jetmoe-8b size); a sequence classifier runs
through `EagerRunner`. Then each backend runs alone: its cases, its greedy generation, its release, and only then
the reference scores its generated tokens, teacher-forced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime import TrtRunner
from export.manifest import model_path, read_manifest
from export.onnx_runtime import OnnxrtRunner
from jetmoe.config import JetMoeConfig
from jetmoe.errors import CheckpointError, InputError, Unavailable
from jetmoe.fileio import atomic_write_text, check_output
from jetmoe.generate import generate
from jetmoe.model import TASKS
from jetmoe.runner import EagerRunner, Runner
from validate import metrics
from validate.cases import Case, Step, default_cases, run_case
from validate.reference import reference_steps, teacher_forced_tokens
from validate.tolerances import DEFAULTS, Tolerances

log = logging.getLogger(__name__)

REFERENCE = "eager-fp32"


@dataclasses.dataclass
class StepReport:
    case: str
    step: str
    logits: metrics.LogitStats
    kv_max_abs: float | None
    kv_scale: float | None
    routing: list[metrics.RoutingStats] | None  # None: the backend has no validation outputs
    sub_block_errors: list[dict[str, Any]] | None
    first_divergence: metrics.Divergence | None
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclasses.dataclass
class GenerationReport:
    tokens: int
    reference: list[list[int]]
    backend: list[list[int]]
    first_divergent_step: int | None  # None: identical
    failures: list[str]


@dataclasses.dataclass
class BackendReport:
    name: str
    dtype: str
    available: bool
    reason: str | None = None
    tolerances: Tolerances | None = None
    steps: list[StepReport] = dataclasses.field(default_factory=list)
    generation: GenerationReport | None = None

    @property
    def passed(self) -> bool:
        return self.available and all(s.passed for s in self.steps) and not (
            self.generation and self.generation.failures)


@dataclasses.dataclass
class ValidationReport:
    checkpoint: str
    onnx: str | None
    engine: str | None
    reference: str
    cases: list[dict[str, Any]]
    backends: list[BackendReport]

    def __bool__(self) -> bool:
        """Passed: every backend asked for ran and matched. A backend that could not run fails the report (a
        CI gate meant for an engine must not pass on the ONNX alone)."""
        return bool(self.backends) and all(b.passed for b in self.backends)

    @property
    def unavailable(self) -> list[BackendReport]:
        return [b for b in self.backends if not b.available]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["passed"] = bool(self)
        for backend, raw in zip(self.backends, out["backends"], strict=True):
            raw["passed"] = backend.passed
        return out

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        from validate.report import render_table

        return render_table(self)


def validate_export(
    checkpoint: str | os.PathLike,
    onnx: str | os.PathLike | None = None,
    engine: str | os.PathLike | None = None,
    *,
    providers: tuple[str, ...] = ("cpu",),
    decode_steps: int = 4,
    long_context: int | None = None,
    generation_tokens: int = 16,
    tolerance_overrides: dict[str, str] | None = None,
    polygraphy_dir: str | os.PathLike | None = None,
) -> ValidationReport:
    checkpoint = Path(checkpoint)
    DEFAULTS["fp32"].replace(tolerance_overrides or {})  # refuses a bad override before any work
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint} does not exist")
    if onnx is None and engine is None:
        raise InputError("nothing to validate: give an ONNX model (--onnx) and/or a TensorRT engine (--engine)")
    onnx = None if onnx is None else model_path(onnx)  # an export folder is as good as its model.onnx
    if engine is not None and not Path(engine).is_file():
        raise InputError(f"no TensorRT engine at {engine}")
    config = JetMoeConfig.from_pretrained(checkpoint)
    task, dtype = "causal-lm", "fp32"
    if onnx is not None:
        manifest = read_manifest(Path(onnx))
        check_same_model(config, manifest.model_config, Path(onnx))
        task, dtype = manifest.task, manifest.dtype
        log.info("[validate] checking %s against the sha256s in export.json", Path(onnx).parent)
        manifest.verify_files(Path(onnx).parent, sha256=True)  # trust nothing modified after export
    tolerances = DEFAULTS[dtype].replace(tolerance_overrides or {})
    if polygraphy_dir is not None:
        check_output(polygraphy_dir, kind="dir", overwrite=True, inputs=[checkpoint], marker="reference.json")

    cases = default_cases(config, decode_steps, long_context) if task == "causal-lm" else default_cases(
        config, 0, 0)[:1]
    # Polygraphy's own check gets one unpadded row (every output position meaningful), computed with the others
    polygraphy = (Case(f"{cases[0].name}, first row", cases[0].prompts[:1])
                  if polygraphy_dir is not None and onnx is not None else None)
    wanted = cases + ([polygraphy] if polygraphy else [])
    log.info("[validate] reference %s: %d cases", REFERENCE, len(cases))
    if task == "causal-lm":  # layer-major: one layer's fp32 weights in memory at a time
        ref_steps = reference_steps(checkpoint, wanted)
    else:
        with EagerRunner(lambda: TASKS[task].from_pretrained(checkpoint, dtype="fp32"),
                         validation_outputs=True) as reference:
            ref_steps = {case.name: run_case(reference, case) for case in wanted}
    if polygraphy is not None:
        save_polygraphy_reference(ref_steps.pop(polygraphy.name)[0], Path(onnx), Path(polygraphy_dir))

    runners: list[Runner] = [OnnxrtRunner(onnx, provider) for provider in providers] if onnx else []
    if engine is not None:
        runners.append(TrtRunner(engine))
    backends = []
    for runner in runners:
        log.info("[validate] backend %s", runner.name)
        backends.append(_validate_backend(runner, cases, ref_steps, checkpoint,
                                          generation_tokens if task == "causal-lm" else 0, config, dtype, tolerances))
    return ValidationReport(str(checkpoint), None if onnx is None else str(onnx),
                            None if engine is None else str(engine), REFERENCE,
                            [dataclasses.asdict(c) for c in cases], backends)


def check_same_model(config: JetMoeConfig, exported: JetMoeConfig, onnx: Path) -> None:
    """InputError listing every config value where the export's model differs from the checkpoint's."""
    ours, theirs = config.to_dict(), exported.to_dict()
    ours.pop("dtype", None), theirs.pop("dtype", None)
    different = [f"{key}: checkpoint {ours.get(key)!r}, ONNX {theirs.get(key)!r}"
                 for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
    if different:
        raise InputError(f"{onnx} was exported from a different model than the checkpoint ({'; '.join(different)})")


def _validate_backend(runner: Runner, cases: list[Case], ref_steps: dict[str, list[Step]], checkpoint: Path,
                      generation_tokens: int, config: JetMoeConfig, dtype: str,
                      tolerances: Tolerances) -> BackendReport:
    try:
        runner.activate()
    except Unavailable as e:
        return BackendReport(runner.name, dtype, available=False, reason=str(e))
    try:
        report = BackendReport(runner.name, dtype, available=True, tolerances=tolerances)
        for case in cases:
            for ref, test in zip(ref_steps[case.name], run_case(runner, case), strict=True):
                report.steps.append(compare_step(case.name, ref, test, runner, config, tolerances))
        tokens = _generate(runner, cases[0], generation_tokens) if generation_tokens else None
    finally:
        runner.deactivate()
    if tokens is not None:  # the backend's memory is released before the reference scores its tokens
        log.info("[validate] reference %s on %s's %d generated tokens (teacher-forced)", REFERENCE, runner.name,
                 generation_tokens)
        reference = teacher_forced_tokens(checkpoint, list(cases[0].prompts), tokens)
        report.generation = _compare_generation(reference, tokens, tolerances)
    return report


def compare_step(case: str, ref: Step, test: Step, runner: Runner, config: JetMoeConfig,
                 tolerances: Tolerances) -> StepReport:
    names = runner.io_names
    real = ref.real
    logits = metrics.logit_stats(ref.outputs["logits"][real] if ref.outputs["logits"].ndim == 3
                                 else ref.outputs["logits"],
                                 test.outputs["logits"][real] if test.outputs["logits"].ndim == 3
                                 else test.outputs["logits"])
    failures = []
    limit = tolerances.logits_atol + tolerances.logits_rtol * logits.scale
    if logits.max_abs > limit:
        failures.append(f"logits max |diff| {logits.max_abs:.3g} > {limit:.3g}")
    if logits.top1 < tolerances.min_top1:
        failures.append(f"top-1 agreement {logits.top1:.3f} < {tolerances.min_top1}")
    if logits.kl > tolerances.max_kl:
        failures.append(f"KL {logits.kl:.3g} > {tolerances.max_kl:.3g}")

    kv_max = kv_scale = None
    if names.task == "causal-lm":
        kv_max = max(float(np.abs(ref.outputs[n] - test.outputs[n]).max(initial=0.0))
                     for pair in names.present for n in pair)
        kv_scale = max(float(np.abs(ref.outputs[n]).max(initial=0.0)) for pair in names.present for n in pair)
        if kv_max > tolerances.kv_rtol * kv_scale:
            failures.append(f"KV cache max |diff| {kv_max:.3g} > {tolerances.kv_rtol * kv_scale:.3g}")

    routing = errors = divergence = None
    if names.validation_outputs:
        flat_real = real.reshape(-1)
        routing = [metrics.routing_stats(ref.outputs[logits][flat_real], ref.outputs[selected][flat_real],
                                         test.outputs[selected][flat_real], config.num_experts_per_tok,
                                         tolerances.tie_margin, i // 2, logits[-3:])
                   for i, (logits, selected) in enumerate(zip(names.router_logits, names.selected_experts,
                                                              strict=True))]
        for r in routing:
            if r.agree < tolerances.min_routing:
                failures.append(f"layer {r.layer} {r.router.upper()} routing agreement {r.agree:.3f} < "
                                f"{tolerances.min_routing} ({r.decisions} decisions, near-ties excluded)")
        stages = metrics.sub_block_errors(ref.outputs, test.outputs, names, real)
        errors = [{**dataclasses.asdict(d), "rel_error": rel} for d, rel in stages]
        divergence = metrics.first_divergence(stages, tolerances)
    return StepReport(case, test.label, logits, kv_max, kv_scale, routing, errors, divergence, failures)


def _generate(runner: Runner, case: Case, tokens: int) -> list[list[int]]:
    return generate(runner, [list(p) for p in case.prompts], max_new_tokens=tokens, eos_token_id=None)


def _compare_generation(ref: list[list[int]], test: list[list[int]], tolerances: Tolerances) -> GenerationReport:
    first = None
    for step in range(max(len(r) for r in ref)):
        if any(r[step:step + 1] != t[step:step + 1] for r, t in zip(ref, test, strict=True)):
            first = step
            break
    failures = []
    if first is not None and tolerances.generation_must_match:
        failures.append(f"greedy generation diverges from eager at step {first}")
    return GenerationReport(max(len(r) for r in ref), ref, test, first, failures)


# ---- an independent check with Polygraphy -------------------------------------------------------------


def save_polygraphy_reference(step: Step, onnx: Path, folder: Path) -> None:
    """Write `inputs.json` and `reference.json` (a Polygraphy RunResults) of the reference's `step` (one unpadded
    prompt) so Polygraphy can compare the ONNX (and, on a TensorRT machine, an engine) against eager on its own:

        polygraphy run model.onnx --onnxrt --load-inputs inputs.json --load-outputs reference.json \\
            --atol 1e-4 --rtol 1e-3
    """
    import onnx as onnx_lib
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json

    metrics.quiet_polygraphy()
    graph = onnx_lib.load(onnx, load_external_data=False).graph
    types = {v.name: onnx_lib.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
             for v in (*graph.input, *graph.output)}
    feeds = {name: step.feeds[name].astype(types[name]) for name in (v.name for v in graph.input)}
    outputs = {name: step.outputs[name].astype(types[name]) for name in (v.name for v in graph.output)}
    folder.mkdir(parents=True, exist_ok=True)
    save_json([feeds], str(folder / "inputs.json"))
    results = RunResults()
    results.append((REFERENCE, [IterationResult(outputs, runner_name=REFERENCE)]))
    results.save(str(folder / "reference.json"))
