// Volumes the API serves on a series' grid, drawn over the image: explanation heat maps
// (Grad-CAM, float32) and nodule masks (uint16 label maps, label k = the job's finding k).
// Both come as gzipped NIfTI-1 with a RAS sform (ai_engine.io.save_nifti); the viewer finds
// the volume's plane through the shown image and draws it with the canvas transform that
// maps its voxels onto Cornerstone's canvas.
import type { Types } from "@cornerstonejs/core";

import { ApiError, reasonOf } from "./api";
import type { Vec3 } from "./geometry";

export interface NiftiVolume {
  dims: [number, number, number];
  /** Voxel (i, j, k) -> LPS mm, rows of a 3x4 matrix. */
  toLps: number[][];
  values: Float32Array;
  max: number;
}

const DATATYPES: Record<number, (view: DataView, offset: number, little: boolean) => number> = {
  2: (view, offset) => view.getUint8(offset),
  4: (view, offset, little) => view.getInt16(offset, little),
  8: (view, offset, little) => view.getInt32(offset, little),
  16: (view, offset, little) => view.getFloat32(offset, little),
  64: (view, offset, little) => view.getFloat64(offset, little),
  512: (view, offset, little) => view.getUint16(offset, little),
};
const BYTES: Record<number, number> = { 2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 512: 2 };

/** Parses a NIfTI-1 file (gzipped or not) holding one 3D volume with an sform. */
export async function parseNifti(buffer: ArrayBuffer): Promise<NiftiVolume> {
  let bytes = new Uint8Array(buffer);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 352) throw new Error("the file is not NIfTI-1");
  const little = view.getInt32(0, true) === 348;
  if (!little && view.getInt32(0, false) !== 348) throw new Error("the file is not NIfTI-1");
  const dim = (index: number) => view.getInt16(40 + 2 * index, little);
  if (dim(0) < 3 || (dim(0) > 3 && dim(4) > 1)) throw new Error("the file is not one 3D volume");
  const dims: [number, number, number] = [dim(1), dim(2), dim(3)];
  const datatype = view.getInt16(70, little);
  const read = DATATYPES[datatype];
  if (!read) throw new Error(`NIfTI data type ${datatype} is not supported`);
  if (view.getInt16(254, little) <= 0) throw new Error("the file has no sform (patient geometry)");
  const srow = (row: number) => [0, 1, 2, 3].map((col) => view.getFloat32(280 + 16 * row + 4 * col, little));
  const ras = [srow(0), srow(1), srow(2)];
  // RAS -> LPS: negate the first two rows.
  const toLps = [ras[0].map((v) => -v), ras[1].map((v) => -v), ras[2]];
  const slope = view.getFloat32(112, little) || 1;
  const intercept = view.getFloat32(116, little) || 0;
  const offset = Math.max(352, Math.round(view.getFloat32(108, little)));
  const count = dims[0] * dims[1] * dims[2];
  const size = BYTES[datatype];
  if (offset + count * size > bytes.byteLength) throw new Error("the file is truncated");
  const values = new Float32Array(count);
  let max = 0;
  for (let n = 0; n < count; n += 1) {
    const value = read(view, offset + n * size, little) * slope + intercept;
    values[n] = value;
    if (value > max) max = value;
  }
  return { dims, toLps, values, max };
}

export async function fetchNifti(url: string): Promise<NiftiVolume> {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(response.status, reasonOf(response.status, body));
  }
  return parseNifti(await response.arrayBuffer());
}

export function voxelToLps(map: NiftiVolume, i: number, j: number, k: number): Vec3 {
  const m = map.toLps;
  return [0, 1, 2].map((r) => m[r][0] * i + m[r][1] * j + m[r][2] * k + m[r][3]) as Vec3;
}

/** The volume's k index (voxel units, fractional) of the plane through `point`. */
export function planeIndex(map: NiftiVolume, point: Vec3): number {
  const m = map.toLps;
  const a = [
    [m[0][0], m[0][1], m[0][2]],
    [m[1][0], m[1][1], m[1][2]],
    [m[2][0], m[2][1], m[2][2]],
  ];
  const d = [point[0] - m[0][3], point[1] - m[1][3], point[2] - m[2][3]];
  const det = (x: number[][]) =>
    x[0][0] * (x[1][1] * x[2][2] - x[1][2] * x[2][1]) -
    x[0][1] * (x[1][0] * x[2][2] - x[1][2] * x[2][0]) +
    x[0][2] * (x[1][0] * x[2][1] - x[1][1] * x[2][0]);
  const whole = det(a);
  if (Math.abs(whole) < 1e-12) return NaN;
  const third = a.map((row, r) => [row[0], row[1], d[r]]); // Cramer's rule for k
  return det(third) / whole;
}

/** RGBA of a voxel's value; alpha 0 leaves the image as it is. */
export type Colour = (value: number) => [number, number, number, number];

/** Heat: transparent below a fifth of the maximum, then yellow to red, more opaque when hotter. */
export const heatColour =
  (max: number): Colour =>
  (value) => {
    const t = Math.min(1, Math.max(0, value / max));
    return t < 0.2 ? [0, 0, 0, 0] : [255, Math.round(255 * (1 - t)), 0, Math.round(200 * t)];
  };

/** A mask: the voxels of one label in translucent cyan. */
export const labelColour =
  (label: number): Colour =>
  (value) =>
    Math.round(value) === label ? [0, 200, 255, 110] : [0, 0, 0, 0];

/**
 * Draws the volume's plane through the shown image (`origin`: its position) on `canvas`,
 * coloured by `colour`; returns whether a plane was drawn.
 */
export function drawPlane(
  canvas: HTMLCanvasElement,
  viewport: Types.IStackViewport,
  map: NiftiVolume | null,
  origin: Vec3 | null,
  colour: Colour,
): boolean {
  const ratio = window.devicePixelRatio || 1;
  const { clientWidth: width, clientHeight: height } = canvas;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  if (!context || !map || !origin) return false;
  const kExact = planeIndex(map, origin);
  const k = Math.round(kExact);
  if (!Number.isFinite(kExact) || Math.abs(kExact - k) > 0.25 || k < 0 || k >= map.dims[2]) return false;

  const [nx, ny] = map.dims;
  const tile = document.createElement("canvas");
  tile.width = nx;
  tile.height = ny;
  const tileContext = tile.getContext("2d");
  if (!tileContext) return false;
  const pixels = tileContext.createImageData(nx, ny);
  for (let j = 0; j < ny; j += 1) {
    for (let i = 0; i < nx; i += 1) {
      pixels.data.set(colour(map.values[i + nx * (j + ny * k)]), 4 * (i + nx * j));
    }
  }
  tileContext.putImageData(pixels, 0, 0);

  // Canvas positions of voxel centres (0,0), (1,0), (0,1) of plane k give the transform.
  const c00 = viewport.worldToCanvas(voxelToLps(map, 0, 0, k) as Types.Point3);
  const c10 = viewport.worldToCanvas(voxelToLps(map, 1, 0, k) as Types.Point3);
  const c01 = viewport.worldToCanvas(voxelToLps(map, 0, 1, k) as Types.Point3);
  const a = c10[0] - c00[0];
  const b = c10[1] - c00[1];
  const c = c01[0] - c00[0];
  const d = c01[1] - c00[1];
  context.setTransform(
    a * ratio,
    b * ratio,
    c * ratio,
    d * ratio,
    (c00[0] - 0.5 * a - 0.5 * c) * ratio,
    (c00[1] - 0.5 * b - 0.5 * d) * ratio,
  );
  context.imageSmoothingEnabled = true;
  context.drawImage(tile, 0, 0);
  return true;
}
