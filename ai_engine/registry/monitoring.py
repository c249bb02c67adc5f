"""Drift monitoring: each version's acceptance and agreement over a rolling window of verdicts.

Acceptance = share of verdicts that accept the finding. Agreement = share where the
radiologist's answer matches the model's: accepts, plus nodule corrections that keep the
nodule (centre moved at most half its diameter, diameter within 25 %). The first full
window sets the version's baseline; when a rolling figure falls more than the project's
`alert_margin` below it, the version gets an open `ModelAlert` (shown in API and admin),
resolved once the figures recover.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from ai_engine.registry.models import ModelAlert, ModelVersion

MINOR_DIAMETER_CHANGE = 0.25


@dataclass(frozen=True)
class Figures:
    n: int
    acceptance: float | None
    agreement: float | None


def _agrees(feedback) -> bool:
    from annotations.models import FindingKind, Verdict

    if feedback.verdict == Verdict.ACCEPT:
        return True
    if feedback.verdict == Verdict.REJECT:
        return False
    finding = feedback.finding
    if finding.kind != FindingKind.NODULE:
        return False  # another grade
    radius = (finding.diameter_mm or 0) / 2
    moved = feedback.corrected_center_lps_mm and finding.center_lps_mm
    if moved and math.dist(feedback.corrected_center_lps_mm, finding.center_lps_mm) > radius:
        return False
    if feedback.corrected_diameter_mm and finding.diameter_mm:
        change = abs(feedback.corrected_diameter_mm - finding.diameter_mm) / finding.diameter_mm
        if change > MINOR_DIAMETER_CHANGE:
            return False
    return True


def version_figures(*, version: ModelVersion, window: int, offset: int = 0) -> Figures:
    """Figures over the `window` most recent verdicts on the version's findings."""
    from annotations.models import FindingFeedback, Verdict

    rows = list(
        FindingFeedback.objects.filter(finding__model_version=version)
        .select_related("finding")
        .order_by("-updated_at", "-id")[offset : offset + window]
    )
    if not rows:
        return Figures(0, None, None)
    accepted = sum(1 for f in rows if f.verdict == Verdict.ACCEPT)
    agreed = sum(1 for f in rows if _agrees(f))
    return Figures(len(rows), accepted / len(rows), agreed / len(rows))


def version_check(*, version_id: int) -> ModelAlert | None:
    """Update the version's baseline or alert from its latest verdicts; returns the open alert."""
    from ai_engine.registry.services import ai_settings_for

    version = ModelVersion.objects.select_related("project").get(pk=version_id)
    config = ai_settings_for(project=version.project)
    window, margin = config.monitoring_window, config.alert_margin
    current = version_figures(version=version, window=window)
    if current.n < window:
        return version.alerts.filter(resolved_at__isnull=True).first()
    if version.baseline_acceptance is None:
        # The first full window (the oldest verdicts) is the baseline, then frozen.
        from annotations.models import FindingFeedback

        total = FindingFeedback.objects.filter(finding__model_version=version).count()
        first = version_figures(version=version, window=window, offset=max(total - window, 0))
        version.baseline_acceptance = first.acceptance
        version.baseline_agreement = first.agreement
        version.save(update_fields=["baseline_acceptance", "baseline_agreement"])
    drops = {
        "acceptance": version.baseline_acceptance - current.acceptance,
        "agreement": (version.baseline_agreement or 0) - (current.agreement or 0),
    }
    figures = {
        "window": window,
        "margin": margin,
        "baseline_acceptance": version.baseline_acceptance,
        "baseline_agreement": version.baseline_agreement,
        **{f"rolling_{k}": v for k, v in asdict(current).items() if k != "n"},
        "verdicts": current.n,
        "drop": drops,
    }
    open_alert = version.alerts.filter(resolved_at__isnull=True).first()
    falling = {name: drop for name, drop in drops.items() if drop > margin}
    if falling:
        message = "; ".join(
            f"{name} fell {drop:.0%} below baseline ({figures['baseline_' + name]:.0%} -> "
            f"{figures['rolling_' + name]:.0%} over the last {window} verdicts)"
            for name, drop in falling.items()
        )
        message = f"v{version.version} {version.task}: {message}"[:500]
        if open_alert is None:
            try:
                with transaction.atomic():
                    open_alert = ModelAlert.objects.create(
                        version=version, figures=figures, message=message
                    )
            except IntegrityError:
                open_alert = version.alerts.filter(resolved_at__isnull=True).first()
        else:
            open_alert.figures, open_alert.message = figures, message
            open_alert.save(update_fields=["figures", "message"])
        return open_alert
    if open_alert is not None:
        open_alert.resolved_at = timezone.now()
        open_alert.save(update_fields=["resolved_at"])
    return None


def check_all() -> int:
    """Check every champion and candidate (beat); returns how many have an open alert."""
    flagged = 0
    for version_id in ModelVersion.objects.exclude(status=ModelVersion.Status.RETIRED).values_list(
        "pk", flat=True
    ):
        if version_check(version_id=version_id) is not None:
            flagged += 1
    return flagged
