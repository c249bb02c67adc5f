"""Export (TorchScript, ONNX) with parity, INT8 quantization, distillation; derived folders predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ai_engine.cli import main
from ai_engine.data.phantoms import write_brain_mri
from ai_engine.deploy.distill import DistillationLoss, count_parameters, pick_student
from ai_engine.deploy.export import export_onnx, max_abs_diff, onnx_session, run_onnx
from ai_engine.deploy.folders import export_folder, quantize_folder
from ai_engine.errors import InputError, ModelFolderError
from ai_engine.grading.config import GradingConfig
from ai_engine.grading.data import CHANNELS
from ai_engine.grading.model import load_grading_model
from ai_engine.grading.train import preprocessing_record
from ai_engine.modelfolder import Component, save_model_folder
from ai_engine.networks import build_network

torch.set_num_threads(2)
SIZE = (32, 32, 32)
SMALL = {
    # the gated grading ResNet: a narrower teacher leaves no student within 1/4 of its size
    "resnet3d": {"block_inplanes": [16, 32, 64, 64]},
    "vit_classifier": {"num_layers": 2, "hidden_size": 64, "mlp_dim": 128, "num_heads": 4},
}


def make_folder(root: Path, network: str) -> Path:
    """A grading model folder with random weights (export/quantize do not need training)."""
    torch.manual_seed(0)
    config = GradingConfig(network=network, network_kwargs=SMALL[network], spatial_size=SIZE)
    kwargs = config.build_kwargs()
    module = build_network(network, **kwargs).eval()
    return save_model_folder(
        root / f"{network}-fp32",
        task="tumor-grading",
        components={"model": Component(network=network, network_kwargs=kwargs, module=module)},
        preprocessing=preprocessing_record(config),
        postprocessing={"temperature": 1.5, "grades": [1, 2, 3]},
        extra={"grading_config": config.to_dict()},
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def cases(root) -> Path:
    items = []
    for seed, grade in zip(range(300, 303), (1, 2, 3), strict=True):
        write_brain_mri(root / f"case{seed}", seed, grade=grade, shape=SIZE)
        items.append({"images": {n: f"case{seed}/{n}" for n in CHANNELS}, "grade": grade})
    (root / "datalist.json").write_text(
        json.dumps({"training": items, "validation": items, "testing": items})
    )
    return root


@pytest.fixture(scope="module")
def resnet(root) -> Path:
    return make_folder(root, "resnet3d")


@pytest.fixture(scope="module")
def vit(root) -> Path:
    return make_folder(root, "vit_classifier")


@pytest.mark.parametrize("network", ["resnet3d", "vit_classifier"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_reproduces_pytorch(root, resnet, vit, network, fmt):
    src = resnet if network == "resnet3d" else vit
    out = root / f"{network}-{fmt}"
    report = export_folder(src, out, fmt=fmt, exporter="legacy")
    assert report["components"]["model"]["max_abs_diff"] <= 1e-4
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["made_by"] == "exported"
    assert manifest["components"]["model"]["format"] == fmt
    assert manifest["parent"]["path"] == str(src.resolve())
    assert manifest["postprocessing"]["temperature"] == 1.5
    # the exported folder loads as a grading model and agrees with the original
    x = np.random.default_rng(1).normal(size=(3, 4, *SIZE)).astype(np.float32)
    ref, got = load_grading_model(src), load_grading_model(out)
    assert max_abs_diff(ref.logits(x), got.logits(x)) <= 1e-4
    assert got.temperature == ref.temperature


def test_dynamo_exporter_parity(tmp_path):
    net = build_network(
        "resnet3d", in_channels=1, num_classes=1, block_inplanes=[4, 8, 8, 8]
    ).eval()
    path, used = export_onnx(
        net, torch.zeros(1, 1, 16, 16, 16), tmp_path / "m.onnx", exporter="dynamo", fallback=False
    )
    assert used == "dynamo"
    x = torch.randn(2, 1, 16, 16, 16)  # batch 2: the batch axis is dynamic
    with torch.no_grad():
        assert max_abs_diff(net(x), run_onnx(onnx_session(path), x.numpy())) <= 1e-4


def test_failed_parity_writes_nothing(root, resnet):
    out = root / "too-strict"
    with pytest.raises(ModelFolderError, match="differs from PyTorch"):
        export_folder(resnet, out, fmt="onnx", exporter="legacy", tolerance=1e-12)
    assert not (out / "model.json").exists()


def test_static_int8_folder_predicts_via_cli(root, resnet, cases, capsys):
    out = root / "resnet-int8"
    code = main(
        ["quantize", "--model", str(resnet), "--out", str(out), "--method", "auto",
         "--calibration-datalist", str(cases / "datalist.json"), "--calibration-count", "3"]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["made_by"] == "quantized"
    assert manifest["made_by_params"]["components"]["model"]["method"] == "static"
    graph = onnx.load(str(out / "model.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert main(["grading", "predict", "--model", str(out), "--study", str(cases / "case301")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["grade"] in (1, 2, 3) and result["model"]["made_by"] == "quantized"
    # int8 stays close to fp32 on a real study
    fp32, int8 = load_grading_model(resnet), load_grading_model(out)
    study = fp32.load(str(cases / "case301"))
    assert max_abs_diff(fp32.logits(study.image[None]), int8.logits(study.image[None])) < 0.2


def test_torch_static_int8_folder_predicts(root, resnet, cases, capsys):
    from ai_engine.grading.evaluate import grading_calibration_batches

    out = root / "resnet-int8-torch"
    calib = grading_calibration_batches(resnet, cases / "datalist.json", count=3)
    report = quantize_folder(resnet, out, method="torch-static", calibration_batches=calib)
    assert report["components"]["model"] == {
        **report["components"]["model"],
        "method": "torch-static",
        "format": "torchscript",
        "calibration_batches": 3,
    }
    int8 = load_grading_model(out)
    assert int8.folder.made_by == "quantized"
    assert "quantized::conv3d" in str(int8.runner.inlined_graph)  # int8 kernels, not fp32
    fp32 = load_grading_model(resnet)
    study = fp32.load(str(cases / "case302"))
    assert max_abs_diff(fp32.logits(study.image[None]), int8.logits(study.image[None])) < 0.2
    assert main(["grading", "predict", "--model", str(out), "--study", str(cases / "case302")]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["made_by"] == "quantized"
    # without calibration data: a clear error, and no folder
    with pytest.raises(InputError, match="calibration"):
        quantize_folder(resnet, root / "no-calib", method="torch-static")
    assert not (root / "no-calib").exists()


def test_dynamic_int8_vit(root, vit):
    out = root / "vit-int8"
    report = quantize_folder(vit, out, method="auto")
    assert report["components"]["model"]["method"] == "dynamic"
    int8 = load_grading_model(out)
    assert int8.folder.manifest["components"]["model"]["format"] == "torchscript"
    graph = str(int8.runner.inlined_graph)
    assert "quantized" in graph
    x = np.random.default_rng(2).normal(size=(2, 4, *SIZE)).astype(np.float32)
    assert max_abs_diff(load_grading_model(vit).logits(x), int8.logits(x)) < 0.2


def test_gradcam_refuses_exported_folder(root, resnet, cases, capsys):
    out = root / "resnet3d-onnx"
    if not out.exists():
        export_folder(resnet, out, fmt="onnx", exporter="legacy")
    code = main(
        [
            "grading",
            "explain",
            "--model",
            str(out),
            "--study",
            str(cases / "case300"),
            "--out",
            str(root / "x"),
        ]
    )
    assert code == 2
    assert "Grad-CAM needs the PyTorch weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("network", "kwargs"),
    [
        ("resnet3d", {"in_channels": 4, "num_classes": 3}),
        ("densenet121_3d", {"in_channels": 4, "num_classes": 3}),
        ("vit_classifier", {"in_channels": 4, "num_classes": 3, "img_size": 32}),
    ],
)
def test_student_has_at_most_a_quarter_of_the_parameters(network, kwargs):
    choice = pick_student(network, kwargs)
    teacher = count_parameters(build_network(network, **kwargs))
    student = count_parameters(build_network(choice["network"], **choice["kwargs"]))
    assert student == choice["student_parameters"] and teacher == choice["teacher_parameters"]
    assert student <= teacher / 4
    assert student > teacher / 40  # still a usable network, not a degenerate one


def test_distillation_loss_pulls_student_to_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(8, 3)
    student = torch.nn.Linear(8, 3)
    x = torch.randn(64, 8)
    with torch.no_grad():
        t = teacher(x)
    labels = t.argmax(1)
    loss_fn = DistillationLoss(temperature=4.0, alpha=0.9)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    first = None
    for _ in range(40):
        loss = loss_fn(student(x), t, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=2.0)


def test_distill_cli_writes_small_student(root, resnet, cases, capsys):
    out = root / "student"
    code = main(
        ["distill", "--teacher", str(resnet), "--datalist", str(cases / "datalist.json"), "--out", str(out),
         "--max-steps", "2", "--epochs", "1", "--batch-size", "3", "--quiet"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["distillation"]["parameter_ratio"] <= 0.25
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["made_by"] == "distilled"
    assert manifest["parent"]["path"] == str(resnet.resolve())
    params = manifest["made_by_params"]["distillation"]
    assert params["student_parameters"] <= params["teacher_parameters"] / 4
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(lines[0]["train_loss"])
    student = load_grading_model(out)
    assert count_parameters(student.module) == params["student_parameters"]
    result = student.grade(student.load(str(cases / "case302")))
    assert result["grade"] in (1, 2, 3)
