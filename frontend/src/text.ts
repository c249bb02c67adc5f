// How findings and corrections read in the findings panel.
import type { Feedback, Finding } from "./api";

export function describeFinding(finding: Finding): string {
  const parts = [`#${finding.index + 1} ${finding.kind}`];
  if (finding.diameter_mm !== null) parts.push(`${finding.diameter_mm.toFixed(1)} mm`);
  if (finding.grade !== null) parts.push(`grade ${finding.grade}`);
  if (finding.score !== null) parts.push(`score ${finding.score.toFixed(2)}`);
  if (finding.grade !== null && finding.class_probabilities) {
    const p = finding.class_probabilities[String(finding.grade)];
    if (p !== undefined) parts.push(`p ${p.toFixed(2)}`);
  }
  parts.push(`model v${finding.model.version}`);
  return parts.join(" · ");
}

export function describeCorrection(feedback: Feedback): string {
  const parts: string[] = [];
  if (feedback.corrected_center_lps_mm) {
    parts.push(`centre (${feedback.corrected_center_lps_mm.map((v) => v.toFixed(1)).join(", ")}) mm`);
  }
  if (feedback.corrected_diameter_mm !== null) parts.push(`${feedback.corrected_diameter_mm.toFixed(1)} mm across`);
  if (feedback.corrected_grade !== null) parts.push(`grade ${feedback.corrected_grade}`);
  return `Your correction: ${parts.join(", ")}`;
}
