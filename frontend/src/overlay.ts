// AI findings drawn over the image: a nodule is a sphere (centre and diameter in patient
// coordinates), drawn as the circle where it cuts the shown image plane; the selected finding
// is highlighted, and the colour says the user's verdict.
import type { Types } from "@cornerstonejs/core";

import type { Finding } from "./api";
import { type Vec3, add, sphereCut } from "./geometry";
import type { LoadedSeries } from "./series";

const SVG = "http://www.w3.org/2000/svg";

/** A nodule a radiologist placed: a correction or an addition being made, one given, or a
 * missed nodule added. `key` names it in the drawing (`data-placed`). */
export interface PlacedNodule {
  key: string;
  center: Vec3;
  diameter: number;
  kind: "proposed" | "corrected" | "added";
}

function circleAt(
  svg: SVGSVGElement,
  viewport: Types.IStackViewport,
  inPlane: Vec3,
  center: Vec3,
  diameter: number,
  origin: Vec3,
  normal: Vec3,
): SVGCircleElement | null {
  const cut = sphereCut(center, diameter, origin, normal);
  if (!cut) return null;
  const centre = viewport.worldToCanvas(cut.center as Types.Point3);
  const rim = viewport.worldToCanvas(add(cut.center, [inPlane[0] * cut.radius, inPlane[1] * cut.radius, inPlane[2] * cut.radius]) as Types.Point3);
  const circle = document.createElementNS(SVG, "circle");
  circle.setAttribute("cx", String(centre[0]));
  circle.setAttribute("cy", String(centre[1]));
  circle.setAttribute("r", String(Math.max(3, Math.hypot(rim[0] - centre[0], rim[1] - centre[1]))));
  svg.append(circle);
  return circle;
}

/** Draws the findings that cut image `index`, and the nodules radiologists placed; returns
 * how many findings were drawn. */
export function drawFindings(
  svg: SVGSVGElement,
  viewport: Types.IStackViewport,
  series: LoadedSeries,
  index: number,
  findings: Finding[],
  selected: number | null,
  username: string,
  placed: PlacedNodule[] = [],
): number {
  svg.replaceChildren();
  const { width, height } = svg.getBoundingClientRect();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const origin = series.slices[index]?.position;
  if (!origin || !series.normal) return 0;
  const imageData = viewport.getImageData();
  // A direction within the image plane, to turn the cut's radius (mm) into canvas pixels.
  const inPlane = (imageData?.direction ? Array.from(imageData.direction).slice(0, 3) : [1, 0, 0]) as Vec3;
  let drawn = 0;
  for (const finding of findings) {
    if (!finding.center_lps_mm || !finding.diameter_mm) continue;
    const circle = circleAt(svg, viewport, inPlane, finding.center_lps_mm as Vec3, finding.diameter_mm, origin, series.normal);
    if (!circle) continue;
    const verdict = finding.feedback.find((item) => item.radiologist === username)?.verdict ?? "none";
    circle.setAttribute("class", `finding verdict-${verdict}${finding.id === selected ? " selected" : ""}`);
    circle.setAttribute("data-finding", String(finding.id));
    const label = document.createElementNS(SVG, "text");
    const [x, y, r] = ["cx", "cy", "r"].map((name) => Number(circle.getAttribute(name)));
    label.setAttribute("x", String(x + r + 4));
    label.setAttribute("y", String(y - r));
    label.setAttribute("class", "finding-label");
    label.textContent = `#${finding.index + 1}`;
    svg.append(label);
    drawn += 1;
  }
  for (const nodule of placed) {
    const circle = circleAt(svg, viewport, inPlane, nodule.center, nodule.diameter, origin, series.normal);
    circle?.setAttribute("class", `placed ${nodule.kind}`);
    circle?.setAttribute("data-placed", nodule.key);
  }
  return drawn;
}
