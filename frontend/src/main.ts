// The radiologist's viewer: a project's worklist, a study's images (Cornerstone3D stack
// viewport over the platform's DICOMweb proxy), its AI findings drawn on the images, and
// accept / reject feedback sent to the platform's API.
//
// The Django page (config/templates/viewer.html) gives the project, the user and the CSRF
// token as data attributes of #viewer; everything else comes from the API.
import {
  Enums,
  RenderingEngine,
  type Types,
  init as initCore,
} from "@cornerstonejs/core";
import { init as initLoader } from "@cornerstonejs/dicom-image-loader";
import {
  Enums as ToolEnums,
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as initTools,
} from "@cornerstonejs/tools";

import {
  type AddedFinding,
  Api,
  ApiError,
  type Correction,
  type Finding,
  type Study,
  type StudyDetail,
  type Verdict,
} from "./api";
import { type Vec3, nearestSlice } from "./geometry";
import { type NiftiVolume, drawPlane, fetchNifti, heatColour, labelColour } from "./nifti";
import { element } from "./dom";
import { type PlacedNodule, drawFindings } from "./overlay";
import { type LoadedSeries, loadSeries } from "./series";
import { describeCorrection, describeFinding } from "./text";

import "./viewer.css";

const VIEWPORT_ID = "main";
const TOOL_GROUP_ID = "viewer";

interface State {
  study: StudyDetail | null;
  series: LoadedSeries | null;
  seriesUid: string | null;
  findings: Finding[];
  selected: number | null;
  /** When the radiologist started on this study, or gave the last verdict. */
  clock: number;
  /** Whether the selected finding's explanation heat map is drawn. */
  showHeat: boolean;
  /** Whether the selected finding's mask (where the model gives one) is drawn. */
  showMask: boolean;
  /** The comment typed for the selected finding, sent with its next verdict. */
  comment: string;
  /** The correction being made: a nodule's new centre (a click on the image) and diameter,
   * or another grade. */
  editing: { id: number; center: Vec3 | null; diameter: number | null; grade: number | null } | null;
  /** Missed findings radiologists added to this study. */
  added: AddedFinding[];
  /** A missed finding being added: a nodule (its centre, a click on the image, and
   * diameter) or the study's grade, with a comment. */
  adding: {
    kind: "nodule" | "grade";
    center: Vec3 | null;
    diameter: number;
    grade: number | null;
    comment: string;
  } | null;
}

const DEFAULT_ADDED_DIAMETER_MM = 6;
type AddedKind = "nodule" | "grade";
/** The button that starts each kind of addition. Which kind a series offers, by its modality,
 * is the API's rule, handed over by the page (`data-additions`, e.g. {"CT": "nodule"}). */
const ADDITION_BUTTONS: Record<AddedKind, { testid: string; label: string }> = {
  nodule: { testid: "add-nodule", label: "Add a missed nodule…" },
  grade: { testid: "add-grade", label: "Add a grade…" },
};

/** The page's modality -> kind map, keeping only kinds this viewer knows how to add. */
function parseAdditions(raw: string | undefined): Record<string, AddedKind> {
  const parsed: unknown = JSON.parse(raw ?? "null");
  if (!parsed || typeof parsed !== "object") throw new Error("#viewer lacks what can be added per modality");
  return Object.fromEntries(
    Object.entries(parsed).filter((entry): entry is [string, AddedKind] => entry[1] in ADDITION_BUTTONS),
  );
}

const GRADES = [1, 2, 3];
/** A press and release this close (CSS px) is a click that places, not a window/level drag. */
const CLICK_SLOP_PX = 4;

class Viewer {
  private readonly state: State = {
    study: null,
    series: null,
    seriesUid: null,
    findings: [],
    selected: null,
    clock: performance.now(),
    showHeat: true,
    showMask: true,
    comment: "",
    editing: null,
    added: [],
    adding: null,
  };
  private readonly addedTitle = element("h2", {}, "Added by radiologists");
  private readonly addedList = element("ul", { class: "findings added", "data-testid": "added" });
  /** Heat maps and masks by URL: a study's findings share them. */
  private readonly volumes = new Map<string, NiftiVolume>();
  private readonly heatCanvas = element("canvas", { class: "heat", "data-testid": "heatmap" });
  private readonly maskCanvas = element("canvas", { class: "heat", "data-testid": "mask" });
  private readonly heatToggle = element("input", { type: "checkbox", checked: "", "data-testid": "heat-toggle" });
  private readonly maskToggle = element("input", { type: "checkbox", checked: "", "data-testid": "mask-toggle" });
  private readonly studyList = element("ul", { class: "studies", "data-testid": "studies" });
  private readonly moreStudies = element("button", { class: "more", hidden: "" }, "More studies");
  private readonly seriesSelect = element("select", { "aria-label": "Series", hidden: "" });
  private readonly viewportElement = element("div", { class: "viewport", "data-testid": "viewport" });
  private readonly overlay = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  private readonly statusLine = element("div", { class: "status", "data-testid": "status" });
  private readonly findingList = element("ul", { class: "findings", "data-testid": "findings" });
  private readonly findingTitle = element("h2", {}, "Findings");
  private readonly message = element("div", { class: "message", role: "alert", "data-testid": "message" });
  private nextStudies: string | null = null;
  private engine!: RenderingEngine;

  constructor(
    private readonly root: HTMLElement,
    private readonly api: Api,
    private readonly username: string,
    /** Verdicts are the radiologists' (the API refuses others); the buttons say so. */
    private readonly canJudge: boolean,
    /** The kind of finding a radiologist may add on a series, by its modality. */
    private readonly additions: Record<string, AddedKind>,
  ) {}

  async start(): Promise<void> {
    this.layout();
    await initCore();
    initLoader({ maxWebWorkers: Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) });
    initTools();
    this.engine = new RenderingEngine("platform-viewer");
    this.engine.enableElement({
      viewportId: VIEWPORT_ID,
      type: Enums.ViewportType.STACK,
      element: this.viewportElement,
    });
    this.tools();
    for (const event of [Enums.Events.IMAGE_RENDERED, Enums.Events.STACK_NEW_IMAGE]) {
      this.viewportElement.addEventListener(event, () => this.redraw());
    }
    new ResizeObserver(() => this.engine.resize(true, true)).observe(this.viewportElement);
    document.addEventListener("keydown", (event) => this.key(event));
    this.root.dataset.state = "ready";
    await this.loadStudies();
  }

  private layout(): void {
    const left = element("section", { class: "panel worklist" });
    left.append(element("h2", {}, "Studies"), this.studyList, this.moreStudies);
    this.moreStudies.addEventListener("click", () => void this.loadStudies());

    const centre = element("section", { class: "centre" });
    const stage = element("div", { class: "stage" });
    this.overlay.setAttribute("class", "overlay");
    this.overlay.setAttribute("data-testid", "overlay");
    stage.append(this.viewportElement, this.heatCanvas, this.maskCanvas, this.overlay);
    this.seriesSelect.addEventListener("change", () => void this.openSeries(this.seriesSelect.value));
    centre.append(this.seriesSelect, stage, this.statusLine);
    this.viewportElement.addEventListener("contextmenu", (event) => event.preventDefault());
    let pressed: [number, number] | null = null;
    stage.addEventListener("pointerdown", (event) => (pressed = [event.clientX, event.clientY]), true);
    stage.addEventListener(
      "pointerup",
      (event) => {
        const moved = pressed ? Math.hypot(event.clientX - pressed[0], event.clientY - pressed[1]) : Infinity;
        pressed = null;
        if (event.button === 0 && moved <= CLICK_SLOP_PX) this.place(event);
      },
      true,
    );

    const right = element("section", { class: "panel" });
    const help = element(
      "p",
      { class: "help" },
      "Wheel: slices · left drag: window/level · right drag: zoom · middle drag: pan · " +
        "A / R: accept / reject the selected finding · N: next finding · H: heat map · M: mask",
    );
    const heatLabel = element("label", { class: "toggle" });
    heatLabel.append(this.heatToggle, document.createTextNode(" Explanation heat map of the selected finding (H)"));
    this.heatToggle.addEventListener("change", () => void this.setLayers({ showHeat: this.heatToggle.checked }));
    const maskLabel = element("label", { class: "toggle" });
    maskLabel.append(this.maskToggle, document.createTextNode(" Mask of the selected finding (M)"));
    this.maskToggle.addEventListener("change", () => void this.setLayers({ showMask: this.maskToggle.checked }));
    right.append(this.findingTitle, this.findingList, this.addedTitle, this.addedList, heatLabel, maskLabel, help);
    this.message.title = "Click to dismiss";
    this.message.addEventListener("click", () => this.clearMessage());
    this.clearMessage();
    this.root.append(left, centre, right, this.message);
  }

  private tools(): void {
    for (const tool of [StackScrollTool, WindowLevelTool, ZoomTool, PanTool]) addTool(tool);
    const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
    if (!group) throw new Error("the tool group already exists");
    const { MouseBindings } = ToolEnums;
    // Refer to tools by their static toolName: minifiers rename classes.
    group.addTool(StackScrollTool.toolName);
    group.addTool(WindowLevelTool.toolName);
    group.addTool(ZoomTool.toolName);
    group.addTool(PanTool.toolName);
    group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.addViewport(VIEWPORT_ID, this.engine.id);
  }

  private viewport(): Types.IStackViewport {
    return this.engine.getViewport(VIEWPORT_ID) as Types.IStackViewport;
  }

  private show(error: unknown): void {
    const text = error instanceof ApiError || error instanceof Error ? error.message : String(error);
    this.message.textContent = text;
    this.message.hidden = false;
  }

  private clearMessage(): void {
    this.message.textContent = "";
    this.message.hidden = true;
  }

  // --- worklist ----------------------------------------------------------------------

  private async loadStudies(): Promise<void> {
    try {
      const page = await this.api.studies(this.nextStudies);
      for (const study of page.results) this.studyList.append(this.studyRow(study));
      this.nextStudies = page.next;
      this.moreStudies.hidden = !page.next;
      if (!this.studyList.children.length) {
        this.studyList.append(element("li", { class: "empty" }, "No studies in this project yet."));
      }
    } catch (error) {
      this.show(error);
    }
  }

  private studyRow(study: Study): HTMLLIElement {
    const row = element("li", { "data-testid": "study", "data-study": study.study_instance_uid });
    const button = element("button", { class: "study" });
    button.append(
      element("strong", {}, study.patient_id || "(no patient id)"),
      element("span", {}, [study.study_date ?? "", study.modalities_in_study.join("/")].join(" ").trim()),
      element("span", { class: "muted" }, study.study_description || `${study.number_of_instances} images`),
      element("span", { class: `ai ai-${study.ai_status}` }, `AI: ${study.ai_status.replace(/_/g, " ")}`),
    );
    button.addEventListener("click", () => void this.openStudy(study.study_instance_uid, row));
    row.append(button);
    return row;
  }

  // --- a study -----------------------------------------------------------------------

  private async openStudy(uid: string, row: HTMLElement): Promise<void> {
    this.clearMessage();
    for (const other of this.studyList.querySelectorAll("li")) other.classList.remove("open");
    row.classList.add("open");
    try {
      const [study, findings, added] = await Promise.all([
        this.api.study(uid),
        this.api.findings(uid),
        this.api.addedFindings(uid),
      ]);
      this.state.study = study;
      this.state.findings = findings;
      this.state.added = added;
      this.state.adding = null;
      this.state.editing = null;
      this.state.selected = null;
      this.state.clock = performance.now();
      this.seriesSelect.replaceChildren(
        ...study.series.map((series) =>
          element(
            "option",
            { value: series.series_instance_uid },
            `${series.modality} #${series.series_number ?? "?"} ${series.series_description} (${series.number_of_instances})`,
          ),
        ),
      );
      this.seriesSelect.hidden = study.series.length < 2;
      // The series the AI read first, else the largest.
      const withFindings = findings.find((finding) => finding.series_instance_uid)?.series_instance_uid;
      const largest = [...study.series].sort((a, b) => b.number_of_instances - a.number_of_instances)[0];
      const seriesUid = withFindings ?? largest?.series_instance_uid;
      if (!seriesUid) throw new ApiError(404, "the study has no series");
      this.seriesSelect.value = seriesUid;
      await this.openSeries(seriesUid);
    } catch (error) {
      this.show(error);
    }
  }

  private async openSeries(seriesUid: string): Promise<void> {
    const study = this.state.study;
    if (!study) return;
    this.viewportElement.dataset.state = "loading";
    try {
      const series = await loadSeries(this.api.dicomWebRoot(), study.study_instance_uid, seriesUid);
      this.state.series = series;
      this.state.seriesUid = seriesUid;
      this.renderFindings();
      const first = this.firstSliceOfInterest(series);
      await this.viewport().setStack(series.slices.map((slice) => slice.imageId), first);
      this.viewport().render();
      this.viewportElement.dataset.state = "shown";
      this.redraw();
    } catch (error) {
      this.viewportElement.dataset.state = "failed";
      this.show(error);
    }
  }

  private firstSliceOfInterest(series: LoadedSeries): number {
    const finding = this.seriesFindings().find((item) => item.center_lps_mm);
    const index = finding ? this.sliceOf(finding, series) : null;
    return index ?? Math.floor(series.slices.length / 2);
  }

  /** The shown series' findings, the model's most confident first (the order N follows). */
  private seriesFindings(): Finding[] {
    return this.state.findings
      .filter((finding) => !finding.series_instance_uid || finding.series_instance_uid === this.state.seriesUid)
      .sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity) || a.index - b.index);
  }

  private sliceOf(finding: Finding, series = this.state.series): number | null {
    if (!series?.normal || !finding.center_lps_mm) return null;
    return nearestSlice(finding.center_lps_mm as Vec3, series.slices.map((slice) => slice.position), series.normal);
  }

  // --- findings ----------------------------------------------------------------------

  private renderFindings(): void {
    this.renderAdded();
    const findings = this.seriesFindings();
    this.findingTitle.textContent = `Findings (${findings.length})`;
    if (!findings.length) {
      this.findingList.replaceChildren(element("li", { class: "empty" }, "No AI findings for this series."));
      return;
    }
    this.findingList.replaceChildren(...findings.map((finding) => this.findingRow(finding)));
  }

  private findingRow(finding: Finding): HTMLLIElement {
    const mine = finding.feedback.find((item) => item.radiologist === this.username);
    const others = finding.feedback.filter((item) => item.radiologist !== this.username);
    const row = element("li", {
      "data-testid": "finding",
      "data-finding": String(finding.id),
      class: finding.id === this.state.selected ? "selected" : "",
    });
    const title = element("button", { class: "finding-title" }, describeFinding(finding));
    if (finding.has_heatmap) title.append(element("span", { class: "muted" }, " · explained"));
    if (finding.has_mask) title.append(element("span", { class: "muted" }, " · mask"));
    title.addEventListener("click", () => void this.select(finding.id));
    const verdict = element(
      "div",
      { class: `verdict ${mine ? `verdict-${mine.verdict}` : ""}`, "data-testid": "verdict" },
      mine ? `Your verdict: ${mine.verdict}` : "No verdict from you yet",
    );
    const actions = element("div", { class: "actions" });
    for (const [verdictName, label] of [
      ["accept", "Accept"],
      ["reject", "Reject"],
      ["correct", "Correct…"],
    ] as const) {
      const button = element("button", { class: `act act-${verdictName}`, "data-verdict": verdictName }, label);
      if (this.canJudge) {
        button.addEventListener("click", () =>
          verdictName === "correct" ? this.startCorrection(finding) : void this.give(finding.id, verdictName),
        );
      } else {
        button.disabled = true;
        button.title = "Verdicts need the radiologist role in this project";
      }
      actions.append(button);
    }
    row.append(title, verdict);
    if (mine?.comment) row.append(element("div", { class: "muted", "data-testid": "comment" }, `“${mine.comment}”`));
    if (finding.id === this.state.selected && this.canJudge) {
      const comment = element("input", {
        type: "text",
        class: "comment",
        placeholder: "Comment with the verdict (optional)",
        "aria-label": "Comment",
        "data-testid": "comment-input",
        maxlength: "5000",
      });
      comment.value = this.state.comment;
      comment.addEventListener("input", () => (this.state.comment = comment.value));
      row.append(comment);
    }
    row.append(actions);
    if (this.state.editing?.id === finding.id) row.append(this.correctionEditor(finding));
    if (mine?.verdict === "correct") row.append(element("div", { class: "muted" }, describeCorrection(mine)));
    if (others.length) {
      const counts = others.map((item) => `${item.radiologist}: ${item.verdict}`).join(", ");
      row.append(element("div", { class: "muted" }, `Others: ${counts}`));
    }
    return row;
  }

  private async select(id: number): Promise<void> {
    if (id !== this.state.selected) this.state.comment = "";
    this.state.selected = id;
    this.renderFindings();
    const finding = this.state.findings.find((item) => item.id === id);
    const index = finding ? this.sliceOf(finding) : null;
    if (index !== null && index !== this.viewport().getCurrentImageIdIndex()) {
      await this.viewport().setImageIdIndex(index);
    }
    await this.loadLayers();
    this.redraw();
  }

  // --- missed findings ---------------------------------------------------------------

  private renderAdded(): void {
    const added = this.state.added.filter((item) => item.series_instance_uid === this.state.seriesUid);
    this.addedTitle.textContent = `Added by radiologists (${added.length})`;
    const rows = added.map((item) => {
      const size =
        item.diameter_mm !== null
          ? ` · ${item.diameter_mm.toFixed(1)} mm`
          : item.grade !== null
            ? ` ${item.grade}`
            : "";
      const who = item.radiologist === this.username ? "you" : item.radiologist;
      const row = element("li", { "data-testid": "added-finding", "data-added": String(item.id) });
      row.append(element("div", {}, `${item.kind}${size} · by ${who}`));
      if (item.comment) row.append(element("div", { class: "muted" }, item.comment));
      return row;
    });
    if (this.state.adding) {
      rows.push(this.addingEditor());
    } else if (this.canJudge && this.state.series?.normal) {
      const holder = element("li", { class: "plain" });
      const modality = this.state.study?.series.find((s) => s.series_instance_uid === this.state.seriesUid)?.modality;
      const kind = modality ? this.additions[modality] : undefined;
      if (kind) {
        const { testid, label } = ADDITION_BUTTONS[kind];
        const start = element("button", { "data-testid": testid }, label);
        start.addEventListener("click", () => {
          this.state.editing = null;
          this.state.adding = { kind, center: null, diameter: DEFAULT_ADDED_DIAMETER_MM, grade: null, comment: "" };
          this.renderFindings();
          this.redraw();
        });
        holder.append(start);
      }
      rows.push(holder);
    }
    this.addedList.replaceChildren(...rows);
  }

  private addingEditor(): HTMLLIElement {
    const adding = this.state.adding!;
    const box = element("li", { class: "editor", "data-testid": "adding" });
    const comment = element("input", {
      type: "text",
      placeholder: "Comment (optional)",
      "data-testid": "added-comment",
      "aria-label": "Comment",
    });
    comment.value = adding.comment;
    comment.addEventListener("input", () => (adding.comment = comment.value));
    const cancel = element("button", {}, "Cancel");
    cancel.addEventListener("click", () => this.stopEditing());
    if (adding.kind === "grade") {
      const select = element("select", { "data-testid": "added-grade", "aria-label": "Grade" });
      select.append(element("option", { value: "" }, "Grade…"));
      for (const grade of GRADES) select.append(element("option", { value: String(grade) }, `grade ${grade}`));
      select.value = adding.grade ? String(adding.grade) : "";
      select.addEventListener("change", () => (adding.grade = select.value ? Number(select.value) : null));
      const save = element("button", { "data-testid": "save-added" }, "Save grade");
      save.addEventListener("click", () => void this.saveAdded());
      box.append(element("div", { class: "muted" }, "The study's tumour grade, which the model did not give."), select, comment, save, cancel);
      return box;
    }
    const diameter = element("input", {
      type: "number",
      min: "0.5",
      step: "0.5",
      value: String(adding.diameter),
      "data-testid": "added-diameter",
      "aria-label": "Diameter (mm)",
    });
    diameter.addEventListener("input", () => {
      adding.diameter = Number(diameter.value);
      this.redraw();
    });
    const save = element("button", { "data-testid": "save-added" }, "Save nodule");
    save.addEventListener("click", () => void this.saveAdded());
    box.append(
      element("div", { class: "muted" }, "Click the image at the nodule's centre; set its diameter (mm)."),
      diameter,
      comment,
      save,
      cancel,
    );
    return box;
  }

  private async saveAdded(): Promise<void> {
    const adding = this.state.adding;
    const seriesUid = this.state.seriesUid;
    if (!adding || !seriesUid) return;
    this.clearMessage();
    try {
      // Without a click there is no centre, without a choice no grade: the API's refusal
      // says so.
      const common = { comment: adding.comment, time_spent_s: this.spentSeconds() };
      const added =
        adding.kind === "grade"
          ? await this.api.addFinding(seriesUid, { kind: "grade", grade: adding.grade, ...common })
          : await this.api.addFinding(seriesUid, {
              kind: "nodule",
              ...(adding.center ? { center_lps_mm: adding.center } : {}),
              diameter_mm: adding.diameter,
              ...common,
            });
      this.state.clock = performance.now();
      this.state.added = [...this.state.added, added];
      this.stopEditing();
    } catch (error) {
      this.show(error);
    }
  }

  private stopEditing(): void {
    this.state.editing = null;
    this.state.adding = null;
    this.renderFindings();
    this.redraw();
  }

  // --- corrections -------------------------------------------------------------------

  private startCorrection(finding: Finding): void {
    this.state.adding = null;
    const mine = finding.feedback.find((item) => item.radiologist === this.username);
    this.state.editing = {
      id: finding.id,
      center: (mine?.corrected_center_lps_mm as Vec3 | null) ?? null,
      diameter: mine?.corrected_diameter_mm ?? finding.diameter_mm,
      grade: mine?.corrected_grade ?? null,
    };
    void this.select(finding.id);
  }

  private correctionEditor(finding: Finding): HTMLElement {
    const editing = this.state.editing!;
    const box = element("div", { class: "editor", "data-testid": "correction" });
    const save = element("button", { "data-testid": "save-correction" }, "Save correction");
    const cancel = element("button", {}, "Cancel");
    cancel.addEventListener("click", () => this.stopEditing());
    if (finding.grade !== null) {
      const select = element("select", { "data-testid": "grade", "aria-label": "Corrected grade" });
      select.append(element("option", { value: "" }, "Grade…"));
      for (const grade of GRADES.filter((g) => g !== finding.grade)) {
        select.append(element("option", { value: String(grade) }, `grade ${grade}`));
      }
      select.value = editing.grade ? String(editing.grade) : "";
      select.addEventListener("change", () => (editing.grade = select.value ? Number(select.value) : null));
      box.append(select);
    } else {
      const diameter = element("input", {
        type: "number",
        min: "0.5",
        step: "0.5",
        "data-testid": "diameter",
        "aria-label": "Corrected diameter (mm)",
        value: editing.diameter !== null ? String(editing.diameter) : "",
      });
      diameter.addEventListener("input", () => {
        editing.diameter = diameter.value ? Number(diameter.value) : null;
        this.redraw();
      });
      box.append(
        element("div", { class: "muted" }, "Click the image at the nodule's centre; set its diameter (mm)."),
        diameter,
      );
    }
    save.addEventListener("click", () => void this.saveCorrection(finding));
    box.append(save, cancel);
    return box;
  }

  /** A click on the image while correcting a nodule: its new centre, on the shown plane. */
  private place(event: PointerEvent): void {
    const box = this.viewportElement.getBoundingClientRect();
    const at = (): Vec3 => {
      const world = this.viewport().canvasToWorld([event.clientX - box.left, event.clientY - box.top]);
      return [world[0], world[1], world[2]];
    };
    if (this.state.adding) {
      if (this.state.adding.kind === "nodule") this.state.adding.center = at();
      this.redraw();
      return;
    }
    const editing = this.state.editing;
    const finding = this.state.findings.find((item) => item.id === editing?.id);
    if (!editing || !finding || finding.grade !== null) return;
    editing.center = at();
    this.redraw();
  }

  private async saveCorrection(finding: Finding): Promise<void> {
    const editing = this.state.editing;
    if (!editing) return;
    const correction: Correction = {};
    if (finding.grade !== null) {
      if (editing.grade !== null) correction.corrected_grade = editing.grade;
    } else {
      if (editing.center) correction.corrected_center_lps_mm = editing.center;
      if (editing.diameter !== null && editing.diameter !== finding.diameter_mm) {
        correction.corrected_diameter_mm = editing.diameter;
      }
    }
    // An empty correction goes to the API too: its refusal says what is missing.
    if (await this.give(finding.id, "correct", correction)) {
      this.state.editing = null;
      this.renderFindings();
      this.redraw();
    }
  }

  /** Nodules the user placed: the correction being made, and corrections given. */
  private placed(): PlacedNodule[] {
    const placed: PlacedNodule[] = [];
    for (const finding of this.seriesFindings()) {
      if (!finding.center_lps_mm || !finding.diameter_mm) continue;
      const editing = this.state.editing?.id === finding.id ? this.state.editing : null;
      if (editing) {
        placed.push({
          key: `proposed-${finding.id}`,
          center: editing.center ?? (finding.center_lps_mm as Vec3),
          diameter: editing.diameter ?? finding.diameter_mm,
          kind: "proposed",
        });
        continue;
      }
      const mine = finding.feedback.find((item) => item.radiologist === this.username);
      if (mine?.verdict === "correct") {
        placed.push({
          key: `corrected-${finding.id}`,
          center: (mine.corrected_center_lps_mm as Vec3 | null) ?? (finding.center_lps_mm as Vec3),
          diameter: mine.corrected_diameter_mm ?? finding.diameter_mm,
          kind: "corrected",
        });
      }
    }
    for (const item of this.state.added) {
      if (item.series_instance_uid !== this.state.seriesUid || !item.center_lps_mm || !item.diameter_mm) continue;
      placed.push({ key: `added-${item.id}`, center: item.center_lps_mm as Vec3, diameter: item.diameter_mm, kind: "added" });
    }
    const adding = this.state.adding;
    if (adding?.center && adding.diameter > 0) {
      placed.push({ key: "proposed-new", center: adding.center, diameter: adding.diameter, kind: "proposed" });
    }
    return placed;
  }

  private async setLayers(change: { showHeat?: boolean; showMask?: boolean }): Promise<void> {
    Object.assign(this.state, change);
    this.heatToggle.checked = this.state.showHeat;
    this.maskToggle.checked = this.state.showMask;
    await this.loadLayers();
    this.redraw();
  }

  /** The selected finding's heat map and mask URLs, where it has them and they are shown. */
  private layerUrls(): { heat: string | null; mask: string | null } {
    const finding = this.state.findings.find((item) => item.id === this.state.selected);
    return {
      heat: finding?.has_heatmap && this.state.showHeat ? this.api.fileUrl(finding.id, "heatmap") : null,
      mask: finding?.has_mask && this.state.showMask ? this.api.fileUrl(finding.id, "mask") : null,
    };
  }

  /** Fetches what the selected finding needs drawn, once per file. */
  private async loadLayers(): Promise<void> {
    for (const url of Object.values(this.layerUrls())) {
      if (!url || this.volumes.has(url)) continue;
      try {
        this.volumes.set(url, await fetchNifti(url));
      } catch (error) {
        this.show(error);
      }
    }
  }

  /** Seconds (to 0.1) since the study was opened or the last verdict or addition. */
  private spentSeconds(): number {
    return Math.round((performance.now() - this.state.clock) / 100) / 10;
  }

  /** Sends a verdict; true when the API recorded it (else its reason is shown). */
  private async give(id: number, verdict: Verdict, correction: Correction = {}): Promise<boolean> {
    this.clearMessage();
    const spent = this.spentSeconds();
    try {
      const comment = id === this.state.selected ? this.state.comment : "";
      const feedback = await this.api.feedback(id, verdict, spent, correction, comment);
      this.state.clock = performance.now();
      this.state.comment = "";
      const finding = this.state.findings.find((item) => item.id === id);
      if (finding) {
        finding.feedback = [...finding.feedback.filter((item) => item.radiologist !== feedback.radiologist), feedback];
      }
      this.state.selected = id;
      if (verdict !== "correct") this.state.editing = null;
      this.renderFindings();
      this.redraw();
      return true;
    } catch (error) {
      this.show(error);
      return false;
    }
  }

  private key(event: KeyboardEvent): void {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (event.key === "Escape" && (this.state.editing || this.state.adding)) {
      this.stopEditing();
      return;
    }
    const findings = this.seriesFindings();
    if (event.key === "n" && findings.length) {
      const at = findings.findIndex((item) => item.id === this.state.selected);
      void this.select(findings[(at + 1) % findings.length].id);
    } else if (event.key === "h") {
      void this.setLayers({ showHeat: !this.state.showHeat });
    } else if (event.key === "m") {
      void this.setLayers({ showMask: !this.state.showMask });
    } else if ((event.key === "a" || event.key === "r") && this.state.selected !== null && this.canJudge) {
      void this.give(this.state.selected, event.key === "a" ? "accept" : "reject");
    }
  }

  // --- drawing -----------------------------------------------------------------------

  private redraw(): void {
    const series = this.state.series;
    if (!series) return;
    const viewport = this.viewport();
    const index = viewport.getCurrentImageIdIndex();
    const drawn = drawFindings(
      this.overlay,
      viewport,
      series,
      index,
      this.seriesFindings(),
      this.state.selected,
      this.username,
      this.placed(),
    );
    const origin = series.slices[index]?.position ?? null;
    const urls = this.layerUrls();
    const heat = urls.heat ? (this.volumes.get(urls.heat) ?? null) : null;
    const heatShown = drawPlane(this.heatCanvas, viewport, heat && heat.max > 0 ? heat : null, origin, heatColour(heat?.max ?? 1));
    this.heatCanvas.dataset.shown = String(heatShown);
    const selected = this.state.findings.find((item) => item.id === this.state.selected);
    const mask = urls.mask && selected ? (this.volumes.get(urls.mask) ?? null) : null;
    const maskShown = drawPlane(this.maskCanvas, viewport, mask, origin, labelColour((selected?.index ?? -1) + 1));
    this.maskCanvas.dataset.shown = String(maskShown);
    const voi = viewport.getProperties().voiRange;
    const window = voi ? `W ${Math.round(voi.upper - voi.lower)} L ${Math.round((voi.upper + voi.lower) / 2)}` : "";
    this.statusLine.textContent =
      `Image ${index + 1} / ${series.slices.length}  ${window}  ${drawn} finding(s) on this image` +
      (heatShown ? "  heat map shown" : "") +
      (maskShown ? "  mask shown" : "");
    this.statusLine.dataset.image = String(index + 1);
  }
}

async function main(): Promise<void> {
  const root = document.getElementById("viewer");
  if (!root) throw new Error("the page has no #viewer element");
  const { project, username, csrf, roles, additions } = root.dataset;
  if (!project || !username || !csrf) throw new Error("#viewer lacks its project, user or CSRF token");
  const canJudge = (roles ?? "").split(" ").includes("radiologist");
  try {
    const viewer = new Viewer(root, new Api(project, csrf), username, canJudge, parseAdditions(additions));
    await viewer.start();
  } catch (error) {
    root.dataset.state = "failed";
    root.prepend(element("div", { class: "message", role: "alert" }, `The viewer could not start: ${String(error)}`));
    throw error;
  }
}

void main();
