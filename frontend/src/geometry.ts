// Patient-space geometry (LPS mm) for placing findings on image planes.
export type Vec3 = [number, number, number];

export const dot = (a: Vec3, b: Vec3): number => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];

export const sub = (a: Vec3, b: Vec3): Vec3 => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];

export const add = (a: Vec3, b: Vec3): Vec3 => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];

export const scale = (a: Vec3, s: number): Vec3 => [a[0] * s, a[1] * s, a[2] * s];

export function cross(a: Vec3, b: Vec3): Vec3 {
  const c: Vec3 = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const length = Math.hypot(...c) || 1;
  return scale(c, 1 / length);
}

/** Signed distance (mm) of `point` from the plane through `origin` with unit `normal`. */
export const planeDistance = (point: Vec3, origin: Vec3, normal: Vec3): number =>
  dot(sub(point, origin), normal);

/**
 * Where a sphere (a nodule: centre and diameter) cuts the plane: the centre projected onto the
 * plane and the cut's radius, or null when the plane misses the sphere.
 */
export function sphereCut(
  center: Vec3,
  diameter: number,
  origin: Vec3,
  normal: Vec3,
): { center: Vec3; radius: number } | null {
  const distance = planeDistance(center, origin, normal);
  const radius = diameter / 2;
  if (Math.abs(distance) > radius) return null;
  return { center: sub(center, scale(normal, distance)), radius: Math.sqrt(radius * radius - distance * distance) };
}

/** Index of the slice whose plane is nearest `point` (slices without a position are skipped). */
export function nearestSlice(point: Vec3, positions: (Vec3 | null)[], normal: Vec3): number | null {
  let best: number | null = null;
  let bestDistance = Infinity;
  positions.forEach((origin, index) => {
    if (!origin) return;
    const distance = Math.abs(planeDistance(point, origin, normal));
    if (distance < bestDistance) {
      best = index;
      bestDistance = distance;
    }
  });
  return best;
}
