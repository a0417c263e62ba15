"""``report.html``: the audit for people, one self-contained file rendered from the report dict.

Everything is rendered from the JSON form of the report (never from live objects), so
``aeaudit report report.json`` reproduces the scan-time page byte for byte. Figures are
embedded as ``data:`` URIs; the page loads nothing from anywhere.

The sections are built in :mod:`.views` and :mod:`.findings_views`; this module renders them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import write_text
from .certification_views import certification_view
from .findings_views import gallery_view, latent_map_view
from .fmt import normalise
from .views import certificates_view, losses_view, model_view, reproducibility_view, scorers_view, verdict_view

TEMPLATES = Path(__file__).parent / "templates"
SECTIONS = (
    ("verdict", "Verdict"),
    ("model", "Model and data"),
    ("losses", "Loss histograms"),
    ("certificates", "Analytic certificates"),
    ("certification", "Certification"),
    ("latent-map", "Latent map"),
    ("gallery", "Blind regions"),
    ("scorers", "Scorer comparison"),
    ("reproducibility", "Reproducibility"),
)


# ----------------------------------------------------------------------------- rendering
def _environment():
    from jinja2 import Environment, FileSystemLoader

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env


def build_view(report: dict) -> dict[str, Any]:
    """Everything the template shows, computed from the report dict alone."""
    m = report.get("model") or {}
    return {
        "title": f"aeaudit report — {Path(str(m.get('source') or 'model')).name}",
        "version": (report.get("tool") or {}).get("version", ""),
        "sections": SECTIONS,
        "verdict": verdict_view(report),
        "model": model_view(report),
        "losses": losses_view(report),
        "certificates": certificates_view(report),
        "certification": certification_view(report),
        "latent_map": latent_map_view(report),
        "gallery": gallery_view(report),
        "scorers": scorers_view(report),
        "repro": reproducibility_view(report),
    }


def render_html(report: dict) -> str:
    """The HTML page for ``report`` (an ``AuditResult.to_dict()`` or a loaded report.json)."""
    return _environment().get_template("report.html.j2").render(**build_view(normalise(report)))


def write_html(report: dict, path: str | Path) -> Path:
    """Render ``report`` and write it to ``path`` atomically."""
    return write_text(path, render_html(report))
