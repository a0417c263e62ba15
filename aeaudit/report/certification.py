"""The verdict's outcome and the certify check's result in plain words, shared by every report writer.

Everything here reads the report dict only. ``outcome_kind`` tells the five faces of a verdict apart
(a *certified* PASS is its own kind, so no writer can show it like a search PASS); the other
functions say what the certify check examined (which box, which region of it), what it proved and
why a region was not examined, in the same words in the HTML, the terminal, Markdown and JUnit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fmt import num

OUTCOMES = ("PASS", "FAIL", "INCONCLUSIVE", "ERROR")
KINDS = ("certified", "pass", "fail", "inconclusive", "error")
STATES = ("certified", "near", "falsified", "unknown")
SPACES = ("input", "latent")
SPACE_NAMES = {"input": "input space", "latent": "latent map"}
STATE_MEANINGS = {
    "certified": "a float64 lower bound of the loss over the whole box exceeds τ_op: no input there passes the detector",
    "near": "every point lies within δ of one normal sample: outside the examined region",
    "falsified": "wholly ≥ δ from the normal data and holds a verified input with loss ≤ τ_op (a counterexample)",
    "unknown": "not resolved when the effort ran out",
}
BOX_SIDES_SHOWN = 4  # sides written out in a box's text; the rest are in report.json
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def outcome_of(report: dict[str, Any]) -> str:
    """``report["outcome"]``, or for a report written before outcomes existed the one its gate implies."""
    outcome = report.get("outcome")
    if outcome in OUTCOMES:
        return outcome
    if (report.get("gate") or {}).get("failed"):
        return "FAIL"
    if report.get("errors"):
        return "ERROR"
    return "PASS" if report.get("status", "complete") == "complete" else "INCONCLUSIVE"


def outcome_kind(report: dict[str, Any]) -> str:
    """One of :data:`KINDS`: the outcome, with a certified PASS told apart from a search PASS."""
    outcome = outcome_of(report)
    if outcome == "PASS":
        return "certified" if report.get("certified") is True else "pass"
    return outcome.lower()


def certify_artifact(report: dict[str, Any]) -> dict[str, Any]:
    art = (report.get("artifacts") or {}).get("certify")
    return art if isinstance(art, dict) else {}


def examined(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(space, result)`` for each region the certify check examined, input space first."""
    art = certify_artifact(report)
    return [(s, art[s]) for s in SPACES if isinstance(art.get(s), dict) and isinstance(art[s].get("shares"), dict)]


def skipped(report: dict[str, Any]) -> dict[str, str]:
    """Why a region was not examined, per space."""
    return {str(k): str(v) for k, v in (certify_artifact(report).get("skipped") or {}).items()}


def is_proven(result: dict[str, Any]) -> bool:
    """100 % certified or near: no unknown and no falsified box."""
    counts = result.get("counts") or {}
    return counts.get("unknown") == 0 and counts.get("falsified") == 0


def percent(share: Any) -> str:
    """A share for people; never rounds a partial share to 0 % or 100 %."""
    try:
        x = 100 * float(share)
    except (TypeError, ValueError):
        return "—"
    if x == 0 or x == 100:
        return f"{x:.0f} %"
    if x < 0.01:
        return "< 0.01 %"
    if x > 99.99:
        return "> 99.99 %"
    return f"{x:.3g} %"


def box_text(low: Any, high: Any) -> str:
    """``[−1, 1]²``, ``[0, 2] × [−1, 3]``, or the first sides and how many there are."""
    lo, hi = np.ravel(np.asarray(low, dtype=float)), np.ravel(np.asarray(high, dtype=float))
    d = min(lo.size, hi.size)
    if d == 0:
        return "—"
    sides = [f"[{num(a, 4)}, {num(b, 4)}]" for a, b in zip(lo[:d], hi[:d])]
    if d > 1 and len(set(sides)) == 1:
        return sides[0] + str(d).translate(SUPERSCRIPTS)
    if d <= BOX_SIDES_SHOWN:
        return " × ".join(sides)
    return " × ".join(sides[: BOX_SIDES_SHOWN - 1]) + f" × … ({d} sides, all in report.json)"


def region_words(space: str, result: dict[str, Any]) -> str:
    """What was examined, e.g. "every input in the input domain box [−1, 1]² that lies ≥ δ = 0.18 from
    every normal sample"."""
    r = result.get("region") or {}
    box = f"{r.get('description') or 'the box'} {box_text(r.get('low'), r.get('high'))}"
    far = f"at least δ = {num(r.get('delta'))} from every normal sample"
    if space == "latent":
        return f"every latent code in {box} whose decode lies {far}"
    return f"every input in {box} that lies {far}"


def shares_text(result: dict[str, Any]) -> str:
    shares = result.get("shares") or {}
    return ", ".join(f"{percent(shares.get(s))} {s}" for s in STATES)


def proof_sentence(space: str, result: dict[str, Any]) -> str:
    """What a fully certified-or-near region proves, in one sentence."""
    shares = result.get("shares") or {}
    tau = num((result.get("region") or {}).get("tau_op"))
    has = "decodes to an input with" if space == "latent" else "has"
    return (
        f"{region_words(space, result)} {has} a loss above τ_op = {tau} ({percent(shares.get('certified'))} of the "
        f"box certified by float64 bounds, {percent(shares.get('near'))} within δ of the normal data)"
    )


def result_line(space: str, result: dict[str, Any]) -> str:
    """One line per examined region: proven, or the shares and why it is not."""
    if is_proven(result):
        return f"{SPACE_NAMES[space]} proven free of blind spots ({shares_text(result)})"
    why = "cut short" if result.get("cut_short") else result.get("stop_reason") or "not finished"
    return f"{SPACE_NAMES[space]} not proven ({why}): {shares_text(result)}"


def skipped_lines(report: dict[str, Any]) -> list[str]:
    """One line per region the certify check did not examine, with why."""
    return [f"certify: the {SPACE_NAMES.get(s, s)} was not examined ({why})" for s, why in skipped(report).items()]


def certify_lines(report: dict[str, Any]) -> list[str]:
    """One line per region the certify check examined, then one per region it did not, with why."""
    return [f"certify: {result_line(s, r)}" for s, r in examined(report)] + skipped_lines(report)


def outcome_lines(report: dict[str, Any], certify: bool = True) -> list[str]:
    """What the verdict rests on, under the verdict line: the proof of a certified PASS, "search
    evidence, not proof" for a search PASS (with ``certify``, how far the certify check got), why a
    scan is inconclusive, which checks crashed."""
    kind = outcome_kind(report)
    done = examined(report)
    if kind == "certified":
        not_examined = [f"The {SPACE_NAMES.get(s, s)} was not examined ({why})." for s, why in skipped(report).items()]
        proofs = [f"Proven for the {SPACE_NAMES[s]}: {proof_sentence(s, r)}." for s, r in done]
        return proofs + not_examined + ["Outside these boxes nothing is proven."]
    if kind == "pass":
        lines = ["Search evidence, not proof: the searches found no blind spot, no bound proved there is none."]
        return lines + (certify_lines(report) if certify else [])
    if kind == "inconclusive":
        cut = [p.get("probe") for p in report.get("probes") or [] if p.get("status") == "incomplete"]
        why = report.get("stopped") or "some planned work did not complete"
        return [
            f"Why inconclusive: {why}. Nothing at or above the gate was found in the work done, "
            "but that work is not all the planned work" + (f" (cut short: {', '.join(map(str, cut))})." if cut else ".")
        ]
    if kind == "error":
        crashed = [p.get("probe") for p in report.get("probes") or [] if p.get("status") == "error"]
        return [
            f"{len(report.get('errors') or [])} check(s) crashed"
            + (f" ({', '.join(map(str, crashed))})" if crashed else "")
            + ": their part of the audit is missing, so a PASS cannot be claimed."
        ]
    return []
