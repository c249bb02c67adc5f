"""The mean ensemble: its output is the mean of its members' probabilities, it survives a model
folder, and a bad specification is refused with its reason."""

from __future__ import annotations

import pytest
import torch

from ai_engine.errors import ModelFolderError
from ai_engine.modelfolder import Component, load_model_folder, save_model_folder
from ai_engine.networks import build_network
from ai_engine.networks.ensemble import MeanEnsemble

torch.set_num_threads(2)
UNET = {
    "in_channels": 1,
    "out_channels": 2,
    "channels": (4, 8),
    "strides": (2,),
    "norm": "instance",
}
RESNET = {"num_classes": 1, "block_inplanes": (4, 4, 8, 8)}


def _members(name: str, kwargs: dict, n: int = 2) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_network(name, **kwargs).eval())
    return out


def test_softmax_ensemble_gives_the_mean_probability():
    members = _members("unet3d", UNET, 3)
    ens = MeanEnsemble(members, "softmax").eval()
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        want = sum(torch.softmax(m(x), dim=1) for m in members) / 3
        got = torch.softmax(ens(x), dim=1)
    assert got.shape == (2, 2, 8, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # not the mean of the logits: that would be another (sharper) probability
    with torch.no_grad():
        logit_mean = torch.softmax(sum(m(x) for m in members) / 3, dim=1)
    assert not torch.allclose(got, logit_mean, atol=1e-4)


def test_sigmoid_ensemble_gives_the_mean_probability():
    members = _members("resnet3d", RESNET)
    ens = MeanEnsemble(members, "sigmoid").eval()
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        want = (torch.sigmoid(members[0](x)) + torch.sigmoid(members[1](x))) / 2
        got = torch.sigmoid(ens(x))
    assert got.shape == (3, 1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_ensemble_round_trips_through_a_model_folder(tmp_path):
    spec = {"members": [{"name": "resnet3d", "kwargs": RESNET}] * 2, "output": "sigmoid"}
    ens = MeanEnsemble(_members("resnet3d", RESNET), "sigmoid").eval()
    save_model_folder(
        tmp_path / "m",
        task="toy",
        components={"model": Component(network="mean_ensemble", network_kwargs=spec, module=ens)},
    )
    folder = load_model_folder(tmp_path / "m")
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folder.predict(x), ens(x))
    assert isinstance(folder.model, MeanEnsemble) and len(folder.model.members) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"members": [{"name": "resnet3d", "kwargs": RESNET}], "output": "sigmoid"}, "at least 2"),
        ({"members": [{"name": "resnet3d", "kwargs": RESNET}] * 2, "output": "mean"}, "not one of"),
        ({"members": [{"kwargs": RESNET}, {"name": "resnet3d"}], "output": "sigmoid"}, "names no"),
        ({"members": [{"name": "nope"}] * 2, "output": "sigmoid"}, "unknown network"),
    ],
)
def test_bad_ensembles_are_refused(kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        build_network("mean_ensemble", **kwargs)


def test_a_folder_whose_ensemble_cannot_be_built_says_so(tmp_path):
    spec = {"members": [{"name": "resnet3d", "kwargs": RESNET}] * 2, "output": "sigmoid"}
    ens = MeanEnsemble(_members("resnet3d", RESNET), "sigmoid")
    save_model_folder(
        tmp_path / "m",
        task="toy",
        components={
            "model": Component(
                network="mean_ensemble", network_kwargs={**spec, "output": "mean"}, module=ens
            )
        },
    )
    with pytest.raises(ModelFolderError, match=r"cannot build network.*not one of"):
        load_model_folder(tmp_path / "m")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_ensemble_exports_with_its_own_output(tmp_path, fmt):
    """The module docstring's promise: export takes an ensemble as it takes one network."""
    from ai_engine.deploy.export import (
        export_onnx,
        export_torchscript,
        load_torchscript,
        max_abs_diff,
        onnx_session,
        run_onnx,
    )

    ens = MeanEnsemble(_members("resnet3d", RESNET), "sigmoid").eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        want = ens(x)
    if fmt == "torchscript":
        got = load_torchscript(export_torchscript(ens, x, tmp_path / "m.pt"))(x)
    else:
        path, _ = export_onnx(ens, x, tmp_path / "m.onnx")
        got = run_onnx(onnx_session(path), x.numpy())
    assert max_abs_diff(want, got) < 1e-4
