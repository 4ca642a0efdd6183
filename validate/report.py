"""The validation report as a terminal table."""

from __future__ import annotations

from validate.metrics import Divergence


def render_table(report) -> str:
    lines = [f"reference: {report.reference} ({report.checkpoint})"]
    header = (f"{'backend':<18} {'case / step':<28} {'max|dlogit|':>11} {'top1':>6} {'top5':>6} {'KL':>9} "
              f"{'routing':>8} {'ties(flip)':>10}  {'first divergence':<18} result")
    for backend in report.backends:
        lines.append("")
        if not backend.available:
            lines.append(f"{backend.name:<18} UNAVAILABLE: {backend.reason}")
            continue
        lines.append(f"{backend.name} ({backend.dtype}; limits: logits {backend.tolerances.logits_atol:g} + "
                     f"{backend.tolerances.logits_rtol:g} x max|logit|, routing >= {backend.tolerances.min_routing})")
        lines.append(header)
        for step in backend.steps:
            if step.routing is None:
                routing, ties = "n/a", "n/a"
            else:
                routing = f"{min(r.agree for r in step.routing):.3f}"
                ties = f"{sum(r.near_ties for r in step.routing)}({sum(r.near_tie_flips for r in step.routing)})"
            lines.append(
                f"{backend.name:<18} {step.case + ' / ' + step.step:<28} {step.logits.max_abs:>11.2e} "
                f"{step.logits.top1:>6.3f} {step.logits.top5:>6.3f} {step.logits.kl:>9.2e} {routing:>8} {ties:>10}  "
                f"{_where(step.first_divergence):<18} {'PASS' if step.passed else 'FAIL'}")
            for failure in step.failures:
                lines.append(f"{'':<18}   - {failure}")
        if any(step.routing is None for step in backend.steps):
            lines.append(f"{'':<18}   (routing and the first divergent sub-block need an export made with "
                         "--validation-outputs)")
        if backend.generation is not None:
            gen = backend.generation
            state = ("identical" if gen.first_divergent_step is None
                     else f"first divergence at step {gen.first_divergent_step}")
            lines.append(f"{backend.name:<18} greedy generation, {gen.tokens} tokens: {state}"
                         f"{'' if not gen.failures else '  FAIL'}")
        lines.append(f"{backend.name}: {'PASS' if backend.passed else 'FAIL'}")
    ran = [b for b in report.backends if b.available]
    missing = ", ".join(b.name for b in report.unavailable)
    verdict = ("PASS" if report else "FAIL: no backend could run" if not ran
               else f"FAIL ({missing} could not run)" if missing and all(b.passed for b in ran) else "FAIL")
    lines += ["", f"validation: {verdict}"]
    return "\n".join(lines)


def _where(divergence: Divergence | None) -> str:
    if divergence is None:
        return "-"
    if divergence.layer is None:
        return f"embedding ({divergence.rel_error:.1e})"
    return f"layer {divergence.layer} {divergence.block.upper()} ({divergence.rel_error:.1e})"
