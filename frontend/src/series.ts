// A series as Cornerstone3D image ids: WADO-RS metadata through the platform's proxy, one
// `wadors:` image id per frame, ordered along the slice normal (instance number when the
// series has no geometry). The metadata is handed to the DICOM image loader so it does not
// fetch it again per image.
import { wadors } from "@cornerstonejs/dicom-image-loader";

import { ApiError, reasonOf } from "./api";
import { type Vec3, cross, dot } from "./geometry";

type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

const SOP_INSTANCE_UID = "00080018";
const INSTANCE_NUMBER = "00200013";
const IMAGE_POSITION = "00200032";
const IMAGE_ORIENTATION = "00200037";
const NUMBER_OF_FRAMES = "00280008";

export interface Slice {
  imageId: string;
  /** Image position (patient), LPS mm, where the series has geometry. */
  position: Vec3 | null;
}

export interface LoadedSeries {
  slices: Slice[];
  /** Unit normal of the image planes (row x column direction); null without geometry. */
  normal: Vec3 | null;
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

export async function loadSeries(root: string, study: string, series: string): Promise<LoadedSeries> {
  const base = `${root}/studies/${study}/series/${series}`;
  const response = await fetch(`${base}/metadata`, {
    headers: { Accept: "application/dicom+json" },
    credentials: "same-origin",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(response.status, reasonOf(response.status, body));
  }
  const instances = (await response.json()) as DicomJson[];
  if (!instances.length) throw new ApiError(404, "the series has no images");

  const orientation = numbers(instances[0], IMAGE_ORIENTATION, 6);
  const normal = orientation
    ? cross([orientation[0], orientation[1], orientation[2]], [orientation[3], orientation[4], orientation[5]])
    : null;
  const along = (instance: DicomJson): number => {
    const position = numbers(instance, IMAGE_POSITION, 3);
    if (normal && position) return dot(position as Vec3, normal);
    return Number(first<number>(instance, INSTANCE_NUMBER) ?? 0);
  };
  const ordered = [...instances].sort((a, b) => along(a) - along(b));

  const slices: Slice[] = [];
  for (const instance of ordered) {
    const sop = first<string>(instance, SOP_INSTANCE_UID);
    if (!sop) continue;
    const frames = Math.max(1, Number(first<number>(instance, NUMBER_OF_FRAMES) ?? 1));
    const position = numbers(instance, IMAGE_POSITION, 3) as Vec3 | null;
    for (let frame = 1; frame <= frames; frame += 1) {
      const imageId = `wadors:${base}/instances/${sop}/frames/${frame}`;
      wadors.metaDataManager.add(imageId, instance as never);
      slices.push({ imageId, position: frames === 1 ? position : null });
    }
  }
  return { slices, normal };
}
