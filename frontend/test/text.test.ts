// How findings, corrections and the API's refusals read in the viewer.
import { describe, expect, it } from "vitest";

import { type Feedback, type Finding, reasonOf } from "../src/api";
import { describeCorrection, describeFinding } from "../src/text";

const finding = (fields: Partial<Finding>): Finding => ({
  id: 1,
  study_instance_uid: "1.2",
  series_instance_uid: "1.2.3",
  model: { id: 4, task: "nodule_detection", version: 3 },
  index: 0,
  kind: "nodule",
  center_lps_mm: [1, 2, 3],
  diameter_mm: null,
  score: null,
  grade: null,
  class_probabilities: null,
  has_heatmap: false,
  has_mask: false,
  feedback: [],
  ...fields,
});

const feedback = (fields: Partial<Feedback>): Feedback => ({
  id: 1,
  radiologist: "r",
  verdict: "correct",
  corrected_center_lps_mm: null,
  corrected_diameter_mm: null,
  corrected_grade: null,
  comment: "",
  time_spent_s: null,
  updated_at: "2026-12-07T00:00:00Z",
  ...fields,
});

describe("describeFinding", () => {
  it("numbers a nodule from 1 and gives its size, score and model version", () => {
    expect(describeFinding(finding({ index: 2, diameter_mm: 7.25, score: 0.916 }))).toBe(
      "#3 nodule · 7.3 mm · score 0.92 · model v3",
    );
  });

  it("gives a grade with the probability of that grade", () => {
    const grade = finding({
      kind: "grade",
      grade: 2,
      center_lps_mm: null,
      class_probabilities: { "1": 0.1, "2": 0.7, "3": 0.2 },
      model: { id: 5, task: "tumor_grading", version: 1 },
    });
    expect(describeFinding(grade)).toBe("#1 grade · grade 2 · p 0.70 · model v1");
  });
});

describe("describeCorrection", () => {
  it("says what was moved, resized or regraded", () => {
    expect(describeCorrection(feedback({ corrected_center_lps_mm: [1, 2.25, -3], corrected_diameter_mm: 6 }))).toBe(
      "Your correction: centre (1.0, 2.3, -3.0) mm, 6.0 mm across",
    );
    expect(describeCorrection(feedback({ corrected_grade: 3 }))).toBe("Your correction: grade 3");
  });
});

describe("reasonOf", () => {
  it("shows DRF's detail as it is", () => {
    expect(reasonOf(403, { detail: "You are not a radiologist of this project." })).toBe(
      "You are not a radiologist of this project.",
    );
  });

  it("names each field with its messages, and non-field errors plainly", () => {
    expect(
      reasonOf(400, { series: ["A nodule is added on a CT series; this series is MR."], non_field_errors: ["Bad."] }),
    ).toBe("series: A nodule is added on a CT series; this series is MR.; Bad.");
  });

  it("says the status when the body has no reason", () => {
    expect(reasonOf(502, null)).toBe("the server answered 502");
    expect(reasonOf(500, "<html>")).toBe("the server answered 500");
    expect(reasonOf(400, {})).toBe("the server answered 400");
  });
});
