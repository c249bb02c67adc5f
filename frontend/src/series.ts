// A series as Cornerstone3D image ids: WADO-RS metadata through the platform's proxy, one
// `wadors:` image id per frame, ordered along the slice normal (instance number when the
// series has no geometry). The metadata is handed to the DICOM image loader so it does not
// fetch it again per image.
import { wadors } from "@cornerstonejs/dicom-image-loader";

import { ApiError, reasonOf } from "./api";
import type { Vec3 } from "./geometry";
import { type DicomJson, orderFrames, sliceNormal } from "./slices";

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

  const normal = sliceNormal(instances);
  const slices = orderFrames(instances, normal).map(({ instance, sopInstanceUid, frame, position }) => {
    const imageId = `wadors:${base}/instances/${sopInstanceUid}/frames/${frame}`;
    wadors.metaDataManager.add(imageId, instance as never);
    return { imageId, position };
  });
  return { slices, normal };
}
