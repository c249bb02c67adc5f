// The viewer's NIfTI reader against files the platform's Python writer made (the heat-map and
// mask endpoints serve that writer's files), and what it refuses.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gzipSync } from "node:zlib";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { heatColour, labelColour, parseNifti, planeIndex, voxelToLps } from "../src/nifti";

const REPO = resolve(__dirname, "../..");
const PYTHON = process.env.PLATFORM_PYTHON ?? join(REPO, ".venv/bin/python");

interface Expected {
  dims: number[];
  toLps: number[][];
  max: number;
  voxels: { ijk: [number, number, number]; value: number }[];
}

let folder: string;
let expected: Record<string, Expected>;

const read = (name: string): ArrayBuffer => {
  const bytes = readFileSync(join(folder, name));
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
};

beforeAll(() => {
  folder = mkdtempSync(join(tmpdir(), "viewer-nifti-"));
  execFileSync(PYTHON, ["-m", "tests.frontend.nifti_fixtures", folder], { cwd: REPO, stdio: "pipe" });
  expected = JSON.parse(readFileSync(join(folder, "expected.json"), "utf8"));
});

afterAll(() => rmSync(folder, { recursive: true, force: true }));

describe.each(["heat", "mask"])("%s.nii.gz written by ai_engine.io.save_nifti", (name) => {
  it("reads the grid, the LPS geometry and every chosen voxel's value", async () => {
    const volume = await parseNifti(read(`${name}.nii.gz`));
    const want = expected[name];
    expect(volume.dims).toEqual(want.dims);
    volume.toLps.forEach((row, r) => row.forEach((v, c) => expect(v).toBeCloseTo(want.toLps[r][c], 4)));
    expect(volume.max).toBeCloseTo(want.max, 5);
    const [nx, ny] = volume.dims;
    for (const { ijk, value } of want.voxels) {
      const [i, j, k] = ijk;
      expect(volume.values[i + nx * (j + ny * k)]).toBeCloseTo(value, 5);
    }
  });

  it("finds each voxel's plane from its LPS position", async () => {
    const volume = await parseNifti(read(`${name}.nii.gz`));
    for (const { ijk } of expected[name].voxels) {
      const [i, j, k] = ijk;
      const lps = voxelToLps(volume, i, j, k);
      const want = expected[name].toLps.map((row) => row[0] * i + row[1] * j + row[2] * k + row[3]);
      lps.forEach((v, axis) => expect(v).toBeCloseTo(want[axis], 3));
      expect(planeIndex(volume, lps)).toBeCloseTo(k, 4);
    }
  });
});

/** A minimal little-endian NIfTI-1 header (348 bytes + 4 of extension flag) and float32 data. */
function nifti({ dims = [2, 2, 2], datatype = 16, sform = 2, values = 8, ndim = 3, t = 1 } = {}): ArrayBuffer {
  const buffer = new ArrayBuffer(352 + 4 * values);
  const view = new DataView(buffer);
  view.setInt32(0, 348, true);
  view.setInt16(40, ndim, true);
  dims.forEach((d, n) => view.setInt16(42 + 2 * n, d, true));
  view.setInt16(48, t, true);
  view.setInt16(70, datatype, true);
  view.setInt16(72, 32, true);
  view.setFloat32(108, 352, true);
  view.setFloat32(112, 1, true);
  view.setInt16(254, sform, true);
  [0, 1, 2].forEach((r) => view.setFloat32(280 + 16 * r + 4 * r, 1, true));
  for (let n = 0; n < values; n += 1) view.setFloat32(352 + 4 * n, n, true);
  return buffer;
}

describe("parseNifti", () => {
  it("reads a plain (not gzipped) file and turns RAS into LPS", async () => {
    const volume = await parseNifti(nifti());
    expect(volume.dims).toEqual([2, 2, 2]);
    expect(Array.from(volume.values)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(volume.toLps[0][0]).toBe(-1); // R -> L
    expect(volume.toLps[1][1]).toBe(-1); // A -> P
    expect(volume.toLps[2][2]).toBe(1);
  });

  it("reads the same file gzipped", async () => {
    const plain = await parseNifti(nifti());
    const zipped = gzipSync(new Uint8Array(nifti()));
    const volume = await parseNifti(zipped.buffer.slice(zipped.byteOffset, zipped.byteOffset + zipped.byteLength));
    expect(volume).toEqual(plain);
  });

  it.each([
    ["a file too short", new ArrayBuffer(100), "not NIfTI-1"],
    ["a header size that is not 348", (() => { const b = nifti(); new DataView(b).setInt32(0, 999, true); return b; })(), "not NIfTI-1"],
    ["a time series", nifti({ ndim: 4, t: 3 }), "not one 3D volume"],
    ["a 2D image", nifti({ ndim: 2 }), "not one 3D volume"],
    ["an RGB data type", nifti({ datatype: 128 }), "data type 128 is not supported"],
    ["no sform", nifti({ sform: 0 }), "no sform"],
    ["fewer values than the grid holds", nifti({ values: 5 }), "truncated"],
  ])("refuses %s", async (_what, buffer, reason) => {
    await expect(parseNifti(buffer)).rejects.toThrow(reason);
  });
});

describe("colours", () => {
  it("leaves cold voxels transparent and turns hotter ones redder and more opaque", () => {
    const colour = heatColour(10);
    expect(colour(1)).toEqual([0, 0, 0, 0]);
    expect(colour(-5)).toEqual([0, 0, 0, 0]);
    const warm = colour(3);
    const hot = colour(10);
    expect(warm[0]).toBe(255);
    expect(hot).toEqual([255, 0, 0, 200]);
    expect(warm[1]).toBeGreaterThan(hot[1]);
    expect(warm[3]).toBeLessThan(hot[3]);
    expect(colour(50)).toEqual(hot); // clipped at the maximum
  });

  it("draws only its own label of a label map", () => {
    const colour = labelColour(2);
    expect(colour(2)[3]).toBeGreaterThan(0);
    expect(colour(2.0001)[3]).toBeGreaterThan(0); // float32 rounding of a stored label
    expect(colour(1)).toEqual([0, 0, 0, 0]);
    expect(colour(0)).toEqual([0, 0, 0, 0]);
  });
});
