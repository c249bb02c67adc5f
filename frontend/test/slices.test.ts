// A series' WADO-RS metadata as the viewer's slices: the order along the slice normal, not the
// order the server lists instances in, and one slice per frame.
import { describe, expect, it } from "vitest";

import { type DicomJson, orderFrames, sliceNormal } from "../src/slices";

const AXIAL = [1, 0, 0, 0, 1, 0];

function instance(sop: string, { position, number, orientation = AXIAL, frames }: {
  position?: number[];
  number?: number;
  orientation?: number[] | null;
  frames?: number;
} = {}): DicomJson {
  const json: DicomJson = { "00080018": { vr: "UI", Value: [sop] } };
  if (position) json["00200032"] = { vr: "DS", Value: position };
  if (number !== undefined) json["00200013"] = { vr: "IS", Value: [number] };
  if (orientation) json["00200037"] = { vr: "DS", Value: orientation };
  if (frames !== undefined) json["00280008"] = { vr: "IS", Value: [frames] };
  return json;
}

const sops = (instances: DicomJson[]) => orderFrames(instances, sliceNormal(instances)).map((f) => f.sopInstanceUid);

describe("orderFrames", () => {
  it("orders by position along the normal, whatever the instance numbers say", () => {
    const listed = [
      instance("c", { position: [0, 0, 5], number: 1 }),
      instance("a", { position: [0, 0, -5], number: 3 }),
      instance("b", { position: [0, 0, 0], number: 2 }),
    ];
    expect(sops(listed)).toEqual(["a", "b", "c"]);
    const frames = orderFrames(listed, sliceNormal(listed));
    expect(frames.map((f) => f.position)).toEqual([[0, 0, -5], [0, 0, 0], [0, 0, 5]]);
    expect(frames.every((f) => f.frame === 1)).toBe(true);
  });

  it("orders along an oblique normal (DS values as strings, as DICOM JSON may carry them)", () => {
    const rows = ["1", "0", "0"];
    const columns = ["0", "0.7071068", "0.7071068"]; // normal (0, -0.707, 0.707)
    const orientation = [...rows, ...columns] as unknown as number[];
    const listed = [
      instance("near", { position: [0, 0, 1], orientation }),
      instance("far", { position: [0, -3, 3], orientation }),
      instance("back", { position: [0, 2, 0], orientation }),
    ];
    expect(sops(listed)).toEqual(["back", "near", "far"]);
  });

  it("falls back to instance numbers without geometry", () => {
    const listed = [
      instance("two", { number: 2, orientation: null }),
      instance("one", { number: 1, orientation: null }),
    ];
    expect(sliceNormal(listed)).toBeNull();
    expect(sops(listed)).toEqual(["one", "two"]);
    expect(orderFrames(listed, null).every((f) => f.position === null)).toBe(true);
  });

  it("gives a multi-frame instance one slice per frame, numbered from 1, without a position", () => {
    const frames = orderFrames([instance("mf", { position: [0, 0, 0], frames: 3 })], [0, 0, 1]);
    expect(frames.map((f) => [f.sopInstanceUid, f.frame, f.position])).toEqual([
      ["mf", 1, null],
      ["mf", 2, null],
      ["mf", 3, null],
    ]);
  });

  it("leaves out an instance without a SOP Instance UID, and a malformed position reads as none", () => {
    const noUid = instance("x", { position: [0, 0, 1] });
    delete noUid["00080018"];
    const badPosition = instance("bad", { position: [0, 0], number: 9 });
    const frames = orderFrames([noUid, badPosition, instance("ok", { position: [0, 0, 2] })], [0, 0, 1]);
    expect(frames.map((f) => f.sopInstanceUid)).toEqual(["ok", "bad"]); // 2 mm, then instance number 9
    expect(frames[1].position).toBeNull();
  });
});
