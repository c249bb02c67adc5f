"""ai_engine.data.datalist: valid datalists resolve their paths; each bad input gets an
InputError naming the bad item."""

from __future__ import annotations

import json

import pytest

from ai_engine.data.datalist import load_datalist, write_datalist
from ai_engine.errors import InputError


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "ct_1").mkdir()
    for seq in ("T1", "T1c", "T2", "FLAIR"):
        (tmp_path / "mr_1" / seq).mkdir(parents=True)
    (tmp_path / "mr_1" / "tumor_mask.nii.gz").write_bytes(b"")
    return tmp_path


CT_ITEM = {"image": "ct_1", "nodules": [{"center_lps_mm": [1.0, -2.5, -100], "diameter_mm": 6.5}]}
MR_ITEM = {
    "images": {"T1": "mr_1/T1", "T1c": "mr_1/T1c", "T2": "mr_1/T2", "FLAIR": "mr_1/FLAIR"},
    "grade": 2,
    "tumor_mask": "mr_1/tumor_mask.nii.gz",
}


def _write(folder, content) -> object:
    path = folder / "datalist.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_valid_datalist_resolves_paths(tree):
    path = _write(tree, {"training": [CT_ITEM], "validation": [MR_ITEM]})
    data = load_datalist(path)
    assert data["testing"] == []
    assert data["training"][0]["image"] == str((tree / "ct_1").resolve())
    assert data["training"][0]["nodules"] == CT_ITEM["nodules"]
    assert data["validation"][0]["images"]["FLAIR"] == str((tree / "mr_1" / "FLAIR").resolve())
    assert data["validation"][0]["tumor_mask"] == str(
        (tree / "mr_1" / "tumor_mask.nii.gz").resolve()
    )
    assert data["validation"][0]["grade"] == 2


def test_paths_are_relative_to_the_datalist_folder(tree, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    path = _write(tree, {"training": [CT_ITEM]})
    assert load_datalist(path)["training"][0]["image"] == str((tree / "ct_1").resolve())


def test_missing_files_allowed_when_not_checked(tmp_path):
    path = _write(tmp_path, {"training": [CT_ITEM]})
    assert load_datalist(path, check_files=False)["training"][0]["image"].endswith("ct_1")


def test_write_then_load(tree):
    path = write_datalist({"training": [CT_ITEM], "testing": [MR_ITEM]}, tree / "out.json")
    assert set(json.loads(path.read_text())) == {"training", "validation", "testing"}
    assert len(load_datalist(path)["testing"]) == 1


def test_a_calibration_split_is_read_and_written_only_where_it_holds_items(tree):
    """ "calibration" (labelled scans no network trains on) is optional: read and resolved like
    the others where present, absent from what is read and written where it is not."""
    path = _write(tree, {"training": [CT_ITEM], "calibration": [CT_ITEM]})
    data = load_datalist(path)
    assert data["calibration"][0]["image"] == str((tree / "ct_1").resolve())
    assert "calibration" not in load_datalist(_write(tree, {"training": [CT_ITEM]}))
    written = write_datalist({"training": [CT_ITEM], "calibration": [CT_ITEM]}, tree / "c.json")
    assert list(json.loads(written.read_text())) == [
        "training", "validation", "testing", "calibration"
    ]  # fmt: skip
    empty = write_datalist({"training": [CT_ITEM], "calibration": []}, tree / "e.json")
    assert "calibration" not in json.loads(empty.read_text())


def _with(item, **changes):
    out = json.loads(json.dumps(item))
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _nodule(**changes):
    return _with(CT_ITEM, nodules=[_with(CT_ITEM["nodules"][0], **changes)])


BAD_DATALISTS = {
    # case: (file content, expected InputError message part)
    "not JSON": ("{training: [", "not valid JSON"),
    "a list, not an object": ([CT_ITEM], "must be a JSON object"),
    "unknown split": (
        {"train": [CT_ITEM]},
        r"unknown keys \['train'\]; allowed are \['training', 'validation', 'testing', "
        r"'calibration'\]",
    ),
    "calibration alone": ({"calibration": [CT_ITEM]}, "holds no items in"),
    "calibration item missing": (
        {"training": [CT_ITEM], "calibration": [_with(CT_ITEM, image="ct_9")]},
        r"calibration\[0\]: 'image' points to .*ct_9",
    ),
    "no items": ({"training": []}, "holds no items"),
    "split not a list": ({"training": {"image": "ct_1"}}, "'training' must be a list"),
    "item not an object": ({"training": ["ct_1"]}, r"training\[0\]: an item must be an object"),
    "neither image nor images": ({"training": [{"nodules": []}]}, "exactly one of 'image'"),
    "both image and images": ({"training": [{**CT_ITEM, **MR_ITEM}]}, "exactly one of 'image'"),
    "image file missing": (
        {"training": [_with(CT_ITEM, image="ct_9")]},
        r"training\[0\]: 'image' points to .*ct_9",
    ),
    "image not a string": (
        {"training": [_with(CT_ITEM, image=3)]},
        "'image' must be a non-empty path",
    ),
    "nodules not a list": (
        {"training": [_with(CT_ITEM, nodules={"a": 1})]},
        "'nodules' must be a list",
    ),
    "nodule without diameter": (
        {"training": [_nodule(diameter_mm=...)]},
        r"nodules\[0\]: a nodule needs",
    ),
    "center of two numbers": ({"training": [_nodule(center_lps_mm=[1, 2])]}, "three numbers"),
    "center as text": ({"training": [_nodule(center_lps_mm="1,2,3")]}, "three numbers"),
    "center with a bool": ({"training": [_nodule(center_lps_mm=[1, True, 3])]}, "three numbers"),
    "negative diameter": ({"training": [_nodule(diameter_mm=-4)]}, "positive number"),
    "diameter as text": ({"training": [_nodule(diameter_mm="6")]}, "positive number"),
    "unknown sequence": (
        {"validation": [_with(MR_ITEM, images={**MR_ITEM["images"], "DWI": "mr_1/T1"})]},
        r"validation\[0\]: unknown sequences \['DWI'\]",
    ),
    "images not an object": (
        {"training": [_with(MR_ITEM, images=["mr_1/T1"])]},
        "'images' must be an object",
    ),
    "sequence folder missing": (
        {"training": [_with(MR_ITEM, images={**MR_ITEM["images"], "T2": "mr_1/T2x"})]},
        "'images.T2' points to",
    ),
    "grade 4": ({"testing": [_with(MR_ITEM, grade=4)]}, r"testing\[0\]: 'grade' must be 1, 2 or 3"),
    "grade as text": ({"training": [_with(MR_ITEM, grade="2")]}, "'grade' must be 1, 2 or 3"),
    "tumor mask missing": (
        {"training": [_with(MR_ITEM, tumor_mask="mr_1/none.nii.gz")]},
        "'tumor_mask' points to",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATALISTS))
def test_bad_datalist_is_rejected(case, tree):
    content, message = BAD_DATALISTS[case]
    path = _write(tree, content)
    with pytest.raises(InputError, match=message):
        load_datalist(path)


def test_missing_datalist_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_datalist(tmp_path / "nope.json")
