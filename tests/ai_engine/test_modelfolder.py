"""Model folders: write, load back in each format, refuse broken folders."""

from __future__ import annotations

import json

import pytest
import torch

from ai_engine.errors import ModelFolderError
from ai_engine.modelfolder import (
    Component,
    load_model_folder,
    manifest_digest,
    save_model_folder,
    update_manifest,
)
from ai_engine.networks import build_network

torch.set_num_threads(2)
KWARGS = {"num_classes": 2, "block_inplanes": (4, 8, 8, 8)}


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_network("resnet3d", **KWARGS).eval()


def test_state_dict_folder_round_trip(tmp_path, net):
    x = torch.randn(2, 1, 16, 16, 16)
    save_model_folder(
        tmp_path / "m",
        task="toy",
        components={"model": Component(network="resnet3d", network_kwargs=KWARGS, module=net)},
        made_by="trained",
        made_by_params={"epochs": 1},
        preprocessing={"spacing": [2, 2, 2]},
        training_data={"sha256": "abc"},
        metrics={"auc": 0.5},
    )
    folder = load_model_folder(tmp_path / "m")
    assert folder.made_by == "trained" and folder.preprocessing == {"spacing": [2, 2, 2]}
    assert folder.manifest["versions"]["torch"] == torch.__version__
    torch.testing.assert_close(folder.predict(x), net(x).detach())
    update_manifest(tmp_path / "m", metrics={"auc": 0.9})
    assert load_model_folder(tmp_path / "m").metrics == {"auc": 0.9}


def test_torchscript_and_onnx_components(tmp_path, net):
    x = torch.randn(1, 1, 16, 16, 16)
    ts = torch.jit.trace(net, x)
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(onnx_path), dynamo=False, input_names=["image"])
    parent = save_model_folder(
        tmp_path / "p",
        task="toy",
        components={"model": Component(network="resnet3d", network_kwargs=KWARGS, module=net)},
    )
    save_model_folder(
        tmp_path / "e",
        task="toy",
        made_by="exported",
        made_by_params={"opset": 17},
        parent={"path": str(parent), "sha256": manifest_digest(parent)},
        components={
            "model": Component(format="torchscript", module=ts),
            "onnx": Component(format="onnx", source_file=onnx_path),
        },
    )
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "model.json",
        "model.ts",
        "onnx.onnx",
    ]
    folder = load_model_folder(tmp_path / "e")
    assert folder.made_by == "exported"
    ref = net(x).detach()
    torch.testing.assert_close(folder.predict(x), ref)
    torch.testing.assert_close(folder.predict(x, "onnx"), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_folder", "model folder not found"),
        ("no_manifest", "model.json is missing"),
        ("bad_version", "format_version"),
        ("no_weights", "weights.pt is missing"),
        ("tampered", "sha256"),
        ("wrong_network", "cannot load weights.pt"),
    ],
)
def test_broken_folders_are_refused(tmp_path, net, breakage, message):
    path = tmp_path / "m"
    save_model_folder(
        path,
        task="toy",
        components={"model": Component(network="resnet3d", network_kwargs=KWARGS, module=net)},
    )
    manifest = json.loads((path / "model.json").read_text())
    if breakage == "no_folder":
        path = tmp_path / "elsewhere"
    elif breakage == "no_manifest":
        (path / "model.json").unlink()
    elif breakage == "bad_version":
        manifest["format_version"] = 99
    elif breakage == "no_weights":
        (path / "weights.pt").unlink()
    elif breakage == "tampered":
        (path / "weights.pt").write_bytes(b"garbage")
    elif breakage == "wrong_network":
        manifest["components"]["model"]["network"]["kwargs"]["num_classes"] = 3
        manifest["components"]["model"]["sha256"] = None
    if breakage in {"bad_version", "wrong_network"}:
        (path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(path)


def test_made_by_is_validated(tmp_path, net):
    with pytest.raises(ValueError, match="made_by"):
        save_model_folder(
            tmp_path,
            task="toy",
            made_by="guessed",
            components={"model": Component(network="resnet3d", module=net)},
        )
