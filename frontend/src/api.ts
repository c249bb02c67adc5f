// The platform's REST API as the viewer uses it: same origin, the Django session cookie for
// authentication and its CSRF token on writes. Every failure becomes an ApiError whose message
// is the server's own reason, so the viewer can show it as it is.

export interface Page<T> {
  count: number;
  next: string | null;
  results: T[];
}

export interface Study {
  study_instance_uid: string;
  patient_id: string;
  patient_name: string;
  study_date: string | null;
  study_description: string;
  modalities_in_study: string[];
  number_of_instances: number;
  ai_status: string;
}

export interface Series {
  series_instance_uid: string;
  modality: string;
  series_description: string;
  series_number: number | null;
  number_of_instances: number;
}

export interface StudyDetail extends Study {
  series: Series[];
}

export type Verdict = "accept" | "reject" | "correct";

export interface Feedback {
  id: number;
  radiologist: string;
  verdict: Verdict;
  corrected_center_lps_mm: [number, number, number] | null;
  corrected_diameter_mm: number | null;
  corrected_grade: number | null;
  comment: string;
  time_spent_s: number | null;
  updated_at: string;
}

export interface Finding {
  id: number;
  study_instance_uid: string;
  series_instance_uid: string;
  model: { id: number; task: string; version: number };
  index: number;
  kind: string;
  center_lps_mm: [number, number, number] | null;
  diameter_mm: number | null;
  score: number | null;
  grade: number | null;
  class_probabilities: Record<string, number> | null;
  has_heatmap: boolean;
  has_mask: boolean;
  feedback: Feedback[];
}

/** What a `correct` verdict changes: a nodule's centre and/or diameter, or a grade. */
export interface Correction {
  corrected_center_lps_mm?: [number, number, number];
  corrected_diameter_mm?: number;
  corrected_grade?: number;
}

/** What a radiologist adds: a nodule (centre and diameter) or a grade; a field left out is
 * refused by the API with its reason. */
export type NewFinding = { comment: string; time_spent_s: number } & (
  | { kind: "nodule"; center_lps_mm?: [number, number, number]; diameter_mm?: number }
  | { kind: "grade"; grade: number | null }
);

/** A finding the model missed, added by a radiologist. */
export interface AddedFinding {
  id: number;
  series_instance_uid: string;
  radiologist: string;
  kind: string;
  center_lps_mm: [number, number, number] | null;
  diameter_mm: number | null;
  grade: number | null;
  comment: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The reason in a DRF error body: `detail`, or each field's messages. */
export function reasonOf(status: number, body: unknown): string {
  if (body && typeof body === "object") {
    const record = body as Record<string, unknown>;
    if (typeof record.detail === "string") return record.detail;
    const parts = Object.entries(record).map(([field, value]) => {
      const text = Array.isArray(value) ? value.join(" ") : String(value);
      return field === "non_field_errors" ? text : `${field}: ${text}`;
    });
    if (parts.length) return parts.join("; ");
  }
  return `the server answered ${status}`;
}

export class Api {
  constructor(
    readonly project: string,
    private readonly csrfToken: string,
  ) {}

  private async request<T>(url: string, init: RequestInit = {}): Promise<T> {
    const headers = new Headers(init.headers);
    headers.set("Accept", "application/json");
    if (init.method && init.method !== "GET") {
      headers.set("Content-Type", "application/json");
      headers.set("X-CSRFToken", this.csrfToken);
    }
    let response: Response;
    try {
      response = await fetch(url, { ...init, headers, credentials: "same-origin" });
    } catch (error) {
      throw new ApiError(0, `the platform cannot be reached (${String(error)})`);
    }
    const text = await response.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, reasonOf(response.status, body));
    return body as T;
  }

  private base(): string {
    return `/api/projects/${encodeURIComponent(this.project)}`;
  }

  studies(next?: string | null): Promise<Page<Study>> {
    return this.request(next ?? `${this.base()}/studies`);
  }

  study(uid: string): Promise<StudyDetail> {
    return this.request(`${this.base()}/studies/${encodeURIComponent(uid)}`);
  }

  findings(studyUid: string): Promise<Finding[]> {
    return this.request(`${this.base()}/studies/${encodeURIComponent(studyUid)}/findings`);
  }

  feedback(
    finding: number,
    verdict: Verdict,
    timeSpentS: number,
    correction: Correction = {},
    comment = "",
  ): Promise<Feedback> {
    return this.request(`${this.base()}/findings/${finding}/feedback`, {
      method: "POST",
      body: JSON.stringify({ verdict, time_spent_s: timeSpentS, comment, ...correction }),
    });
  }

  addedFindings(studyUid: string): Promise<AddedFinding[]> {
    return this.request(`${this.base()}/added-findings?study=${encodeURIComponent(studyUid)}`);
  }

  addFinding(seriesUid: string, finding: NewFinding): Promise<AddedFinding> {
    return this.request(`${this.base()}/added-findings`, {
      method: "POST",
      body: JSON.stringify({ series_instance_uid: seriesUid, ...finding }),
    });
  }

  /** A finding's heat map or mask: NIfTI on the series grid. */
  fileUrl(finding: number, file: "heatmap" | "mask"): string {
    return `${this.base()}/findings/${finding}/${file}`;
  }

  /** Base URL of the project's authorizing DICOMweb proxy (WADO-RS, QIDO-RS). */
  dicomWebRoot(): string {
    return `${window.location.origin}/dicom-web/projects/${encodeURIComponent(this.project)}`;
  }
}
