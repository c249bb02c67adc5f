// A series' instances (WADO-RS metadata, DICOM JSON) as the viewer's slices: ordered along the
// slice normal (instance number when the series has no geometry), one slice per frame. Pure:
// the loader in series.ts fetches the metadata and registers it with Cornerstone.
import { type Vec3, cross, dot } from "./geometry";

export type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

const SOP_INSTANCE_UID = "00080018";
const INSTANCE_NUMBER = "00200013";
const IMAGE_POSITION = "00200032";
const IMAGE_ORIENTATION = "00200037";
const NUMBER_OF_FRAMES = "00280008";

export interface OrderedFrame {
  instance: DicomJson;
  sopInstanceUid: string;
  /** 1-based, as WADO-RS numbers frames. */
  frame: number;
  /** Image position (patient), LPS mm; null without geometry or for a frame of a multi-frame instance. */
  position: Vec3 | null;
}

function first<T>(instance: DicomJson, tag: string): T | undefined {
  return instance[tag]?.Value?.[0] as T | undefined;
}

function numbers(instance: DicomJson, tag: string, length: number): number[] | null {
  const raw = instance[tag]?.Value;
  if (!raw || raw.length !== length) return null;
  const parsed = raw.map(Number);
  return parsed.every(Number.isFinite) ? parsed : null;
}

/** The unit normal of the first instance's image planes (row x column); null without one. */
export function sliceNormal(instances: DicomJson[]): Vec3 | null {
  const orientation = instances.length ? numbers(instances[0], IMAGE_ORIENTATION, 6) : null;
  return orientation
    ? cross([orientation[0], orientation[1], orientation[2]], [orientation[3], orientation[4], orientation[5]])
    : null;
}

/** Every frame of every instance with a SOP Instance UID, in slice order along `normal`. */
export function orderFrames(instances: DicomJson[], normal: Vec3 | null): OrderedFrame[] {
  const along = (instance: DicomJson): number => {
    const position = numbers(instance, IMAGE_POSITION, 3);
    if (normal && position) return dot(position as Vec3, normal);
    return Number(first<number>(instance, INSTANCE_NUMBER) ?? 0);
  };
  const frames: OrderedFrame[] = [];
  for (const instance of [...instances].sort((a, b) => along(a) - along(b))) {
    const sopInstanceUid = first<string>(instance, SOP_INSTANCE_UID);
    if (!sopInstanceUid) continue;
    const count = Math.max(1, Number(first<number>(instance, NUMBER_OF_FRAMES) ?? 1));
    const position = numbers(instance, IMAGE_POSITION, 3) as Vec3 | null;
    for (let frame = 1; frame <= count; frame += 1) {
      frames.push({ instance, sopInstanceUid, frame, position: count === 1 ? position : null });
    }
  }
  return frames;
}
