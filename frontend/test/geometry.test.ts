// Placing findings on image planes: where a nodule's sphere cuts a plane, and which slice is
// nearest a point, on axial and oblique planes.
import { describe, expect, it } from "vitest";

import { type Vec3, cross, nearestSlice, planeDistance, sphereCut } from "../src/geometry";

describe("cross", () => {
  it("gives the unit normal of an axial plane and of an oblique one", () => {
    expect(cross([1, 0, 0], [0, 1, 0])).toEqual([0, 0, 1]);
    const normal = cross([2, 0, 0], [0, 3, 3]); // rows and columns need not be unit
    expect(Math.hypot(...normal)).toBeCloseTo(1, 12);
    expect(normal[1]).toBeCloseTo(-Math.SQRT1_2, 12);
    expect(normal[2]).toBeCloseTo(Math.SQRT1_2, 12);
  });
});

describe("sphereCut", () => {
  const normal: Vec3 = [0, 0, 1];

  it("cuts through the centre at the full radius", () => {
    expect(sphereCut([10, 20, 5], 8, [0, 0, 5], normal)).toEqual({ center: [10, 20, 5], radius: 4 });
  });

  it("cuts off the centre with a smaller radius, the centre projected onto the plane", () => {
    const cut = sphereCut([10, 20, 5], 10, [0, 0, 8], normal);
    expect(cut?.center).toEqual([10, 20, 8]);
    expect(cut?.radius).toBeCloseTo(4, 12); // sqrt(5^2 - 3^2)
  });

  it("misses a plane farther than the radius, on either side", () => {
    expect(sphereCut([10, 20, 5], 6, [0, 0, 8.01], normal)).toBeNull();
    expect(sphereCut([10, 20, 5], 6, [0, 0, 1.99], normal)).toBeNull();
  });

  it("works on an oblique plane", () => {
    const oblique = cross([1, 0, 0], [0, Math.SQRT1_2, Math.SQRT1_2]);
    const center: Vec3 = [0, 0, 2];
    const cut = sphereCut(center, 4, [0, 0, 0], oblique);
    expect(cut).not.toBeNull();
    expect(planeDistance(cut!.center, [0, 0, 0], oblique)).toBeCloseTo(0, 12);
    expect(cut!.radius).toBeCloseTo(Math.sqrt(4 - 2), 12); // the centre is sqrt(2) from the plane
  });
});

describe("nearestSlice", () => {
  const positions: (Vec3 | null)[] = [[0, 0, 0], [0, 0, 2.5], null, [0, 0, 7.5]];

  it("finds the slice whose plane is nearest, skipping slices without a position", () => {
    expect(nearestSlice([5, 5, 2], positions, [0, 0, 1])).toBe(1);
    expect(nearestSlice([5, 5, 5.1], positions, [0, 0, 1])).toBe(3);
    expect(nearestSlice([5, 5, -40], positions, [0, 0, 1])).toBe(0);
  });

  it("is null when no slice has a position", () => {
    expect(nearestSlice([0, 0, 0], [null, null], [0, 0, 1])).toBeNull();
  });
});
