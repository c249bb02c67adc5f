"""The viewer in a real browser: headless Chromium, the built frontend (Vite +
Cornerstone3D), Django's live server, a real Orthanc behind the DICOMweb proxy.

What a radiologist does: log in, open a study from the worklist, see its images and the AI
finding drawn where the model put it, scroll, and accept or reject the finding; the verdict
lands in the database with the time spent. What others get: an annotator is not offered
verdicts (the API refuses them too); a verdict the API refuses shows its reason and changes
nothing; a non-member gets 404; a visitor without a session is sent to the login page; an
installation without a built viewer says so (503).
"""

from __future__ import annotations

import html
import io
import json
import os
import re
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image, ImageStat

from ai_engine.explain.heatmap import save_heatmap
from ai_engine.io import Volume, save_nifti
from annotations.models import AddedFinding, FeedbackHistory, FindingFeedback, FindingKind
from config import views
from imaging import proxy
from imaging.models import Study
from imaging.volumes import load_series_volume
from tests.annotations.factories import make_finding, make_study
from tests.dicomweb.dicom_factory import index_series, make_ct_series, store_series
from tests.factories import PASSWORD

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread while it runs; the ORM calls
    # the tests and pytest-django make meanwhile are plain synchronous ones.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def scene(orthanc, project, users):
    """An 8-slice CT study in Orthanc, indexed in `project`, with one AI nodule finding
    (centre (20, 20, 5) mm LPS, 8 mm: it cuts slices 1-7, nearest slice index 5)."""
    proxy.index_cache.clear()
    series = make_ct_series(patient_id="VIEW-1", seed=7)
    store_series(series, url=orthanc.url, auth=(orthanc.username, orthanc.password))
    study = index_series(project, series)
    with_geometry(study, series)
    finding = make_finding(project, study=study)
    yield {"study": study, "finding": finding, "users": users, "project": project}
    proxy.index_cache.clear()


def with_geometry(study, series) -> None:
    """The index rows' geometry, as ingest records it (corrections are checked against it)."""
    row = study.series.get()
    first = series.datasets[0]
    row.pixel_spacing = [float(v) for v in first.PixelSpacing]
    row.image_orientation_patient = [float(v) for v in first.ImageOrientationPatient]
    row.save(update_fields=["pixel_spacing", "image_orientation_patient"])
    for ds in series.datasets:
        row.instances.filter(sop_instance_uid=str(ds.SOPInstanceUID)).update(
            image_position_patient=[float(v) for v in ds.ImagePositionPatient]
        )


@contextmanager
def viewing(browser, live_server, scene, user, *, study=None):
    """The viewer as `user`, logged in through the form, with `study` (default: the scene's)
    open; no uncaught script error may happen in the page meanwhile."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    target = reverse("viewer", kwargs={"project": scene["project"].slug})
    try:
        page.goto(f"{live_server.url}/accounts/login/?next={target}")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"**{target}")
        page.wait_for_selector("#viewer[data-state=ready]")
        open_first_study(page, (study or scene["study"]).study_instance_uid)
        yield page
        assert errors == []
    finally:
        context.close()


def wait_for_verdict(page, finding_id: int, text: str) -> None:
    page.wait_for_function(
        f"document.querySelector(\"[data-finding='{finding_id}'] [data-testid=verdict]\")"
        f"?.textContent === {text!r}"
    )


def open_first_study(page, study_uid: str) -> None:
    page.click(f"[data-study='{study_uid}'] button")
    page.wait_for_selector("[data-testid=viewport][data-state=shown]", timeout=30_000)


def keep_screenshot(page, name: str) -> None:
    """With VIEWER_SCREENSHOTS=<folder>, keep what the browser showed (to look at by eye)."""
    folder = os.environ.get("VIEWER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def image_number(page) -> int:
    return int(page.get_attribute("[data-testid=status]", "data-image"))


def test_radiologist_reviews_a_finding(browser, live_server, scene):
    radiologist = scene["users"]["radiologist"]
    finding = scene["finding"]
    with viewing(browser, live_server, scene, radiologist) as page:
        rows = page.locator("[data-testid=study]")
        assert rows.count() == 1
        assert "VIEW-1" in rows.first.inner_text()
        assert "open" in rows.first.get_attribute("class")

        # The study opens on the finding's slice (nearest to its centre: index 5 of 8).
        page.wait_for_function(
            "document.querySelector('[data-testid=status]')?.dataset.image === '6'"
        )
        assert re.search(r"Image 6 / 8", page.inner_text("[data-testid=status]"))

        # The pixels came through the proxy and were drawn: the series is noise in [-1000,
        # 1000] HU, so a rendered image is far from uniform.
        shot = Image.open(io.BytesIO(page.locator("[data-testid=viewport]").screenshot()))
        assert ImageStat.Stat(shot.convert("L")).stddev[0] > 20
        keep_screenshot(page, "radiologist-opened")

        # The finding is listed and drawn where it cuts this slice.
        row = page.locator(f"[data-testid=finding][data-finding='{finding.pk}']")
        assert "nodule" in row.inner_text() and "8.0 mm" in row.inner_text()
        circle = page.locator(f"svg.overlay circle[data-finding='{finding.pk}']")
        assert circle.count() == 1
        radius_here = float(circle.get_attribute("r"))

        # Scrolling moves through the stack; one slice away the cut is smaller.
        page.hover("[data-testid=viewport]")
        page.mouse.wheel(0, 120)
        page.wait_for_function(
            "document.querySelector('[data-testid=status]')?.dataset.image !== '6'"
        )
        assert image_number(page) in (5, 7)
        assert float(circle.get_attribute("r")) < radius_here

        # Selecting the finding (N) goes back to its slice; Accept records the verdict.
        page.keyboard.press("n")
        page.wait_for_function(
            "document.querySelector('[data-testid=status]')?.dataset.image === '6'"
        )
        row.locator("[data-testid=comment-input]").fill("solid, well defined")
        row.locator("button[data-verdict=accept]").click()
        wait_for_verdict(page, finding.pk, "Your verdict: accept")
        feedback = FindingFeedback.objects.get(finding=finding, radiologist=radiologist)
        assert (feedback.verdict, feedback.comment) == ("accept", "solid, well defined")
        assert row.locator("[data-testid=comment]").inner_text() == "“solid, well defined”"
        assert feedback.time_spent_s is not None and feedback.time_spent_s > 0

        # Changing one's mind with the keyboard (R): one current verdict, history kept.
        page.keyboard.press("r")
        wait_for_verdict(page, finding.pk, "Your verdict: reject")
        feedback.refresh_from_db()
        assert feedback.verdict == "reject"
        assert FeedbackHistory.objects.filter(feedback=feedback).count() == 2
        assert "verdict-reject" in circle.get_attribute("class")
        keep_screenshot(page, "radiologist-rejected")
        assert page.inner_text("[data-testid=message]") == ""


def test_radiologist_corrects_a_nodule_by_clicking_its_centre(browser, live_server, scene):
    radiologist = scene["users"]["radiologist"]
    finding = scene["finding"]
    with viewing(browser, live_server, scene, radiologist) as page:
        row = page.locator(f"[data-testid=finding][data-finding='{finding.pk}']")
        circle = page.locator(f"svg.overlay circle[data-finding='{finding.pk}']")
        cx, cy = float(circle.get_attribute("cx")), float(circle.get_attribute("cy"))
        px_per_mm = float(circle.get_attribute("r")) / 4.0  # the 8 mm sphere's widest cut
        row.locator("button[data-verdict=correct]").click()
        editor = row.locator("[data-testid=correction]")
        editor.wait_for()

        # A diameter of 0 is refused by the API: its reason is shown, nothing is recorded.
        editor.locator("[data-testid=diameter]").fill("0")
        editor.locator("[data-testid=save-correction]").click()
        message = page.locator("[data-testid=message]")
        message.wait_for(state="visible")
        assert message.inner_text().startswith("corrected_diameter_mm must be in (0, ")
        assert not FindingFeedback.objects.filter(finding=finding).exists()

        # The centre is where the radiologist clicks (30 px right of the AI's), on this slice.
        box = page.locator("[data-testid=viewport]").bounding_box()
        page.mouse.click(box["x"] + cx + 30, box["y"] + cy)
        editor.locator("[data-testid=diameter]").fill("6")
        proposed = page.locator(f"svg.overlay [data-placed='proposed-{finding.pk}']")
        proposed.wait_for()
        assert abs(float(proposed.get_attribute("cx")) - (cx + 30)) < 1.0
        editor.locator("[data-testid=save-correction]").click()
        wait_for_verdict(page, finding.pk, "Your verdict: correct")
        feedback = FindingFeedback.objects.get(finding=finding, radiologist=radiologist)
        assert feedback.verdict == "correct" and feedback.corrected_diameter_mm == 6.0
        expected = [20.0 + 30 / px_per_mm, 20.0, 5.0]
        assert np.allclose(feedback.corrected_center_lps_mm, expected, atol=0.15), (
            feedback.corrected_center_lps_mm,
            expected,
        )
        assert page.locator(f"svg.overlay [data-placed='corrected-{finding.pk}']").count() == 1
        assert "Your correction: centre (" in row.inner_text()
        keep_screenshot(page, "corrected")


def addition_refused(page, editor, reason: str) -> None:
    """Save the addition being edited; the API refuses it with `reason`, shown as worded,
    and nothing is recorded."""
    editor.locator("[data-testid=save-added]").click()
    message = page.locator("[data-testid=message]")
    message.wait_for(state="visible")
    assert message.inner_text() == reason
    assert not AddedFinding.objects.exists()


def addition_saved(page, editor) -> AddedFinding:
    """Save the addition being edited; once it is listed, the one recorded."""
    editor.locator("[data-testid=save-added]").click()
    page.locator("[data-testid=added-finding]").wait_for()
    return AddedFinding.objects.get()


def test_radiologist_adds_a_missed_nodule(browser, live_server, scene):
    radiologist = scene["users"]["radiologist"]
    finding = scene["finding"]
    with viewing(browser, live_server, scene, radiologist) as page:
        circle = page.locator(f"svg.overlay circle[data-finding='{finding.pk}']")
        cx, cy = float(circle.get_attribute("cx")), float(circle.get_attribute("cy"))
        px_per_mm = float(circle.get_attribute("r")) / 4.0
        page.click("[data-testid=add-nodule]")
        editor = page.locator("[data-testid=adding]")

        # Saved before a click on the image: no centre, and the API says so.
        addition_refused(page, editor, "A nodule needs center_lps_mm and diameter_mm.")

        box = page.locator("[data-testid=viewport]").bounding_box()
        page.mouse.click(box["x"] + cx - 60, box["y"] + cy + 40)
        editor.locator("[data-testid=added-diameter]").fill("5")
        editor.locator("[data-testid=added-comment]").fill("second nodule, posterior")
        page.locator("svg.overlay [data-placed=proposed-new]").wait_for()
        added = addition_saved(page, editor)
        assert (added.radiologist, added.kind, added.diameter_mm, added.comment) == (
            radiologist,
            "nodule",
            5.0,
            "second nodule, posterior",
        )
        expected = [20.0 - 60 / px_per_mm, 20.0 + 40 / px_per_mm, 5.0]
        assert np.allclose(added.center_lps_mm, expected, atol=0.15), (
            added.center_lps_mm,
            expected,
        )
        assert added.time_spent_s is not None and added.time_spent_s > 0
        assert "nodule · 5.0 mm · by you" in page.inner_text("[data-testid=added]")
        assert page.locator(f"svg.overlay [data-placed=added-{added.pk}]").count() == 1
        keep_screenshot(page, "added")


def test_radiologist_adds_a_missed_grade(browser, live_server, scene, orthanc):
    """A grade the model did not give, on an MR series (a CT series offers a missed nodule
    instead, an MR series no nodule): refused without a choice (the API's reason shown), then
    recorded with the chosen grade, no position, the comment and the time spent; a click on
    the image meanwhile places nothing."""
    mr = make_ct_series(
        slices=5,
        patient_id="VIEW-1",
        study_instance_uid=scene["study"].study_instance_uid,
        seed=9,
        modality="MR",
    )
    store_series(mr, url=orthanc.url, auth=(orthanc.username, orthanc.password))
    index_series(scene["project"], mr)
    radiologist = scene["users"]["radiologist"]
    with viewing(browser, live_server, scene, radiologist) as page:
        page.locator("[data-testid=add-nodule]").wait_for()  # the CT series the AI read
        assert page.locator("[data-testid=add-grade]").count() == 0
        page.locator("select[aria-label=Series]").select_option(mr.series_instance_uid)
        page.locator("[data-testid=add-grade]").wait_for()
        assert page.locator("[data-testid=add-nodule]").count() == 0
        page.click("[data-testid=add-grade]")
        editor = page.locator("[data-testid=adding]")
        assert editor.locator("[data-testid=added-grade] option").all_inner_texts() == [
            "Grade…", "grade 1", "grade 2", "grade 3",
        ]  # fmt: skip
        addition_refused(page, editor, "grade must be one of [1, 2, 3], got None.")

        box = page.locator("[data-testid=viewport]").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3)
        assert page.locator("svg.overlay [data-placed=proposed-new]").count() == 0
        editor.locator("[data-testid=added-grade]").select_option("3")
        editor.locator("[data-testid=added-comment]").fill("enhancing rim, necrotic core")
        added = addition_saved(page, editor)
        assert (added.radiologist, added.kind, added.grade, added.comment) == (
            radiologist,
            "grade",
            3,
            "enhancing rim, necrotic core",
        )
        assert added.series.series_instance_uid == mr.series_instance_uid
        assert added.center_lps_mm is None and added.diameter_mm is None
        assert added.time_spent_s is not None and added.time_spent_s > 0
        assert "grade 3 · by you" in page.inner_text("[data-testid=added]")
        assert page.locator(f"svg.overlay [data-placed=added-{added.pk}]").count() == 0
        keep_screenshot(page, "added-grade")


def test_radiologist_corrects_a_grade(browser, live_server, scene):
    """A grade finding (no position: listed, not drawn) corrected to another grade."""
    radiologist = scene["users"]["radiologist"]
    graded = make_finding(scene["project"], study=scene["study"], kind=FindingKind.GRADE, index=1)
    graded.score = 0.95  # above the nodule's 0.90: listed first, though the model gave it second
    graded.save(update_fields=["score"])
    with viewing(browser, live_server, scene, radiologist) as page:
        listed = page.locator("[data-testid=finding]")
        order = [listed.nth(n).get_attribute("data-finding") for n in range(listed.count())]
        assert order == [str(graded.pk), str(scene["finding"].pk)]
        row = page.locator(f"[data-testid=finding][data-finding='{graded.pk}']")
        assert "grade 2" in row.inner_text() and "p 0.70" in row.inner_text()
        assert page.locator(f"svg.overlay circle[data-finding='{graded.pk}']").count() == 0
        row.locator("button[data-verdict=correct]").click()
        grade = row.locator("[data-testid=grade]")
        options = grade.locator("option").all_inner_texts()
        assert options == ["Grade…", "grade 1", "grade 3"]  # not the model's own grade
        grade.select_option("3")
        row.locator("[data-testid=save-correction]").click()
        wait_for_verdict(page, graded.pk, "Your verdict: correct")
        feedback = FindingFeedback.objects.get(finding=graded, radiologist=radiologist)
        assert (feedback.verdict, feedback.corrected_grade) == ("correct", 3)
        assert "Your correction: grade 3" in row.inner_text()


def alpha_centroid(page, testid: str) -> tuple[float, float]:
    """Centre (CSS px) of what a drawn layer covers, weighted by its opacity."""
    return tuple(
        page.evaluate(
            """(testid) => {
              const canvas = document.querySelector(`[data-testid=${testid}]`);
              const { data, width, height } =
                canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
              let sum = 0, x = 0, y = 0;
              for (let row = 0; row < height; row++) for (let col = 0; col < width; col++) {
                const alpha = data[4 * (row * width + col) + 3];
                sum += alpha; x += alpha * col; y += alpha * row;
              }
              const ratio = canvas.width / canvas.clientWidth;
              return [x / sum / ratio, y / sum / ratio];
            }""",
            testid,
        )
    )


def on_the_circle(page, finding, point: tuple[float, float]) -> bool:
    circle = page.locator(f"svg.overlay circle[data-finding='{finding.pk}']")
    cx, cy = float(circle.get_attribute("cx")), float(circle.get_attribute("cy"))
    radius = float(circle.get_attribute("r"))
    return abs(point[0] - cx) < radius / 8 and abs(point[1] - cy) < radius / 8


def test_heat_map_and_mask_lie_on_the_finding(browser, live_server, scene, settings, tmp_path):
    """A heat map and a label mask written as inference writes them (NIfTI with a RAS affine,
    on the series grid), both around the finding's centre; the mask also holds another
    finding's label elsewhere. Drawn in the browser, each lies on the finding's circle (a
    flipped or transposed axis, or the other label drawn, would move it: the finding is off
    the image's centre and diagonal)."""
    settings.MEDIA_ROOT = str(tmp_path)
    finding = scene["finding"]
    finding.center_lps_mm = [14.0, 24.5, 5.0]
    # The series' grid as inference gets it: the volume loaded from Orthanc.
    series = load_series_volume(scene["study"].series.get())
    affine = series.affine
    centre = (np.linalg.inv(affine) @ [*finding.center_lps_mm, 1.0])[:3]  # voxel (20, 35, 5)
    i, j, k = np.meshgrid(*(np.arange(n) for n in series.array.shape), indexing="ij")
    distance2 = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2
    save_heatmap(Volume(np.exp(-distance2 / 18.0), affine), tmp_path / "f" / "heat.nii.gz")
    labels = np.where(distance2 <= 16, 1, 0)  # label 1: this finding (index 0)
    labels[45:55, 5:15, :] = 2  # another finding of the same job, far away
    save_nifti(Volume(labels, affine), tmp_path / "f" / "mask.nii.gz", dtype=np.uint16)
    finding.heatmap_path, finding.mask_path = "f/heat.nii.gz", "f/mask.nii.gz"
    finding.save(update_fields=["heatmap_path", "mask_path", "center_lps_mm"])

    radiologist = scene["users"]["radiologist"]
    with viewing(browser, live_server, scene, radiologist) as page:
        page.click(f"[data-finding='{finding.pk}'] .finding-title")
        page.wait_for_selector("[data-testid=heatmap][data-shown=true]")
        page.wait_for_selector("[data-testid=mask][data-shown=true]")
        assert on_the_circle(page, finding, alpha_centroid(page, "heatmap"))
        assert on_the_circle(page, finding, alpha_centroid(page, "mask"))
        assert "heat map shown mask shown" in page.inner_text("[data-testid=status]")
        keep_screenshot(page, "heat-map-and-mask")
        page.keyboard.press("h")  # each hides on its own
        page.wait_for_selector("[data-testid=heatmap][data-shown=false]")
        assert not page.is_checked("[data-testid=heat-toggle]")
        assert page.get_attribute("[data-testid=mask]", "data-shown") == "true"
        page.keyboard.press("m")
        page.wait_for_selector("[data-testid=mask][data-shown=false]")


def test_compressed_series_is_decoded_in_the_browser(browser, live_server, scene, orthanc):
    """JPEG-LS frames come through the proxy as stored; the loader's WebAssembly codec
    (served from /static/viewer/assets/) decodes them in its worker."""
    series = make_ct_series(patient_id="VIEW-JLS", jpeg_ls=True, seed=8)
    store_series(series, url=orthanc.url, auth=(orthanc.username, orthanc.password))
    study = index_series(scene["project"], series)
    radiologist = scene["users"]["radiologist"]
    with viewing(browser, live_server, scene, radiologist, study=study) as page:
        page.wait_for_function(
            "document.querySelector('[data-testid=status]')?.dataset.image === '5'"
        )  # no finding: the middle slice (index 4 of 8)
        shot = Image.open(io.BytesIO(page.locator("[data-testid=viewport]").screenshot()))
        assert ImageStat.Stat(shot.convert("L")).stddev[0] > 20
        assert "No AI findings" in page.inner_text("[data-testid=findings]")


def test_annotator_sees_the_finding_but_cannot_judge_it(browser, live_server, scene):
    annotator = scene["users"]["annotator"]
    finding = scene["finding"]
    with viewing(browser, live_server, scene, annotator) as page:
        assert page.locator(f"svg.overlay circle[data-finding='{finding.pk}']").count() == 1
        accept = page.locator(f"[data-finding='{finding.pk}'] button[data-verdict=accept]")
        assert accept.is_disabled()
        assert "radiologist role" in accept.get_attribute("title")
        page.keyboard.press("n")
        page.keyboard.press("a")  # the shortcut does nothing either
        keep_screenshot(page, "annotator")
        assert not FindingFeedback.objects.filter(finding=finding).exists()


def test_a_refused_verdict_shows_the_servers_reason_and_writes_nothing(browser, live_server, scene):
    """The finding went away (its study was removed) while the radiologist had it open."""
    radiologist = scene["users"]["radiologist"]
    finding = scene["finding"]
    with viewing(browser, live_server, scene, radiologist) as page:
        finding_id = finding.pk
        finding.delete()
        page.locator(f"[data-finding='{finding_id}'] button[data-verdict=accept]").click()
        message = page.locator("[data-testid=message]")
        message.wait_for(state="visible")
        assert message.inner_text() == "No Finding matches the given query."
        assert page.inner_text(f"[data-finding='{finding_id}'] [data-testid=verdict]") == (
            "No verdict from you yet"
        )
        assert not FindingFeedback.objects.filter(radiologist=radiologist).exists()


def test_a_study_with_two_series_has_a_series_menu(browser, live_server, scene, orthanc):
    """The study opens on the series the AI read; the menu switches to the other one."""
    other = make_ct_series(
        slices=5, patient_id="VIEW-1", study_instance_uid=scene["study"].study_instance_uid, seed=9
    )
    store_series(other, url=orthanc.url, auth=(orthanc.username, orthanc.password))
    index_series(scene["project"], other)
    radiologist = scene["users"]["radiologist"]
    with viewing(browser, live_server, scene, radiologist) as page:
        menu = page.locator("select[aria-label=Series]")
        assert menu.is_visible() and menu.locator("option").count() == 2
        assert image_number(page) == 6 and "Image 6 / 8" in page.inner_text("[data-testid=status]")
        menu.select_option(other.series_instance_uid)
        page.wait_for_function(
            "document.querySelector('[data-testid=status]')?.textContent.startsWith('Image 3 / 5')"
        )  # no finding on it: its middle slice
        assert "No AI findings for this series." in page.inner_text("[data-testid=findings]")
        assert page.locator("svg.overlay circle").count() == 0


def test_a_heat_map_the_server_lacks_shows_its_reason(browser, live_server, scene, settings):
    settings.MEDIA_ROOT = "/nonexistent-media"
    finding = scene["finding"]
    finding.heatmap_path = "f/gone.nii.gz"  # recorded, but the file is not there
    finding.save(update_fields=["heatmap_path"])
    radiologist = scene["users"]["radiologist"]
    with viewing(browser, live_server, scene, radiologist) as page:
        page.click(f"[data-finding='{finding.pk}'] .finding-title")
        message = page.locator("[data-testid=message]")
        message.wait_for(state="visible")
        assert message.inner_text() == f"Finding {finding.pk} has no heatmap file."
        assert page.get_attribute("[data-testid=heatmap]", "data-shown") == "false"
        message.click()  # dismissed
        message.wait_for(state="hidden")


def test_leaving_an_editor_records_nothing(browser, live_server, scene):
    """Escape leaves a correction and Cancel an addition, each after a click on the image."""
    radiologist = scene["users"]["radiologist"]
    finding = scene["finding"]
    with viewing(browser, live_server, scene, radiologist) as page:
        box = page.locator("[data-testid=viewport]").bounding_box()
        page.click(f"[data-finding='{finding.pk}'] button[data-verdict=correct]")
        page.mouse.click(box["x"] + 100, box["y"] + 100)
        page.locator(f"svg.overlay [data-placed='proposed-{finding.pk}']").wait_for()
        page.keyboard.press("Escape")
        page.locator("[data-testid=correction]").wait_for(state="detached")
        assert page.locator("svg.overlay [data-placed]").count() == 0

        page.click("[data-testid=add-nodule]")
        page.mouse.click(box["x"] + 100, box["y"] + 100)
        page.locator("svg.overlay [data-placed=proposed-new]").wait_for()
        page.locator("[data-testid=adding] button", has_text="Cancel").click()
        page.locator("[data-testid=adding]").wait_for(state="detached")
        assert page.locator("svg.overlay [data-placed]").count() == 0
        assert not FindingFeedback.objects.exists() and not AddedFinding.objects.exists()


def test_the_worklist_pages_on(browser, live_server, scene):
    """Fifty studies a page (the API's); More studies fetches the next page."""
    older = [make_study(scene["project"]).pk for _ in range(50)]
    # Newest first: the scene's study (which the viewer opens) on the first page.
    Study.objects.filter(pk__in=older).update(study_date=date(2000, 1, 1))
    Study.objects.filter(pk=scene["study"].pk).update(study_date=date(2024, 1, 15))
    radiologist = scene["users"]["radiologist"]
    with viewing(browser, live_server, scene, radiologist) as page:
        rows = page.locator("[data-testid=study]")
        assert rows.count() == 50
        page.click("button.more")
        page.wait_for_function("document.querySelectorAll('[data-testid=study]').length === 51")
        assert page.locator("button.more").is_hidden()


def test_viewer_page_for_non_members_anonymous_and_without_a_build(client, scene, monkeypatch):
    url = reverse("viewer", kwargs={"project": scene["project"].slug})
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")

    client.force_login(scene["users"]["non_member"])
    assert client.get(url).status_code == 404
    assert client.get(reverse("viewer", kwargs={"project": "no-such-project"})).status_code == 404

    client.force_login(scene["users"]["radiologist"])
    page = client.get(url)
    assert page.status_code == 200
    assert b"viewer/viewer.js" in page.content and b'data-project="' in page.content
    # What the viewer offers to add on each modality is the API's rule, from the page.
    additions = re.search(r'data-additions="([^"]*)"', page.content.decode())
    assert additions and json.loads(html.unescape(additions.group(1))) == {
        "CT": "nodule",
        "MR": "grade",
    }

    monkeypatch.setattr(views, "VIEWER_BUNDLE", views.VIEWER_BUNDLE.with_name("missing.js"))
    missing = client.get(url)
    assert missing.status_code == 503
    assert b"make frontend" in missing.content
