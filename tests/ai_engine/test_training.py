"""The shared training module: loss falls, resume replays the same steps, transfer report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandSpatialCropd

from ai_engine.errors import InputError
from ai_engine.networks import build_network
from ai_engine.training import (
    CutMixBatch,
    EpochLoader,
    TrainConfig,
    Trainer,
    intensity_augmentations,
    load_partial_weights,
    make_dataset,
    seed_everything,
    spatial_augmentations,
    training_data_hash,
)

torch.set_num_threads(2)


def _blob_items(n: int, seed: int) -> list[dict]:
    """Images with one bright cube each; the label marks the cube."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        image = rng.normal(0.2, 0.05, (1, 24, 24, 24)).astype(np.float32)
        label = np.zeros((1, 24, 24, 24), np.float32)
        c = rng.integers(6, 18, size=3)
        sl = tuple(slice(x - 3, x + 3) for x in c)
        image[(0, *sl)] += 0.6
        label[(0, *sl)] = 1
        items.append({"image": image, "label": label})
    return items


def _trainer(tmp_path, epochs=2, **cfg) -> Trainer:
    seed_everything(7)
    transform = Compose(
        [
            RandSpatialCropd(keys=["image", "label"], roi_size=(16, 16, 16), random_size=False),
            *spatial_augmentations(
                ["image", "label"], modes=["bilinear", "nearest"], elastic_prob=0.0
            ),
            *intensity_augmentations(["image"]),
        ]
    )
    dataset = make_dataset(_blob_items(6, 0), transform)
    loader = EpochLoader(dataset, batch_size=2, seed=3)
    net = build_network("unet3d", channels=(4, 8, 16), strides=(2, 2), num_res_units=0)
    options = {
        "steps_per_epoch": 4,
        "lr": 1e-2,
        "warmup_steps": 2,
        "accumulation_steps": 2,
        "seed": 3,
        "progress": False,
        "monitor": "train_loss",
        **cfg,
    }
    config = TrainConfig(epochs=epochs, **options)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    return Trainer(net, loss, loader, config, tmp_path)


def _crash_after_epoch_1(trainer: Trainer) -> None:
    """Run `trainer` until it has written the checkpoint of epoch 1, then crash it."""

    def crash(epoch, line):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash after the epoch-1 checkpoint")

    trainer.on_epoch_end = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def test_loss_falls_and_log_written(tmp_path):
    trainer = _trainer(tmp_path, epochs=4)
    result = trainer.fit()
    losses = [x["train_loss"] for x in result.history]
    assert result.steps == 16
    assert losses[-1] < losses[0] * 0.9, losses
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2, 3]
    assert {"train_loss", "lr", "step", "step_losses", "time_s"} <= set(lines[0])
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best_weights.pt").is_file()
    # warm-up then cosine: lr rises over the first steps and ends below its peak
    assert lines[-1]["lr"] < 1e-2


def test_resume_gives_the_same_next_steps(tmp_path):
    full = _trainer(tmp_path / "full", epochs=3)
    started: list[int] = []
    full.on_epoch_start = started.append
    full_hist = full.fit().history
    assert started == [0, 1, 2]  # before each epoch, in order
    part = _trainer(tmp_path / "part", epochs=3)
    _crash_after_epoch_1(part)
    torch.manual_seed(999)  # disturb global RNGs: resume must restore them
    np.random.seed(999)
    resumed = _trainer(tmp_path / "part", epochs=3)
    resumed.on_epoch_start = started.append
    resumed_hist = resumed.fit(resume=True).history
    assert started[3:] == [2]  # only the epoch that still had to run
    assert [h["epoch"] for h in resumed_hist] == [0, 1, 2]
    for a, b in zip(full_hist, resumed_hist, strict=True):
        np.testing.assert_allclose(a["step_losses"], b["step_losses"], rtol=1e-6, atol=1e-7)
    for (na, pa), (nb, pb) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert na == nb
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ema_validates_and_keeps_the_ramped_moving_average(tmp_path):
    """With `ema_decay`, after optimizer step n the average is lerp(previous, weights, 1 - d)
    with d = min(decay, (1 + n') / (10 + n')) (n' = updates before; the first copies); the
    validation sees the average, and the best weights are the average's, not the raw ones."""
    trainer = _trainer(tmp_path, epochs=4, ema_decay=0.3, steps_per_epoch=1, accumulation_steps=1)
    raw, seen = [], []
    trainer.on_epoch_end = lambda epoch, line: raw.append(_weights(trainer.model))

    def validate(model):
        assert model is trainer.ema.module and model is not trainer.model
        seen.append(_weights(model))
        return {"train_loss": float(4 - len(seen))}  # each epoch better: the last is best

    trainer.validate = validate
    result = trainer.fit()
    assert result.best_epoch == 3 and len(raw) == len(seen) == 4
    expected = raw[0]
    for n, weights in enumerate(raw[1:], start=1):
        d = min(0.3, (1 + n) / (10 + n))
        expected = {
            k: v + (weights[k] - v) * (1 - d) if v.is_floating_point() else weights[k]
            for k, v in expected.items()
        }
        for k, v in expected.items():
            torch.testing.assert_close(seen[n][k], v, rtol=1e-5, atol=1e-6)
    best = torch.load(result.best_weights, weights_only=True)
    for k, v in best.items():
        torch.testing.assert_close(v, seen[-1][k])
    assert any(not torch.equal(best[k], raw[-1][k]) for k in best)


def test_ema_resumes_with_its_average(tmp_path):
    full = _trainer(tmp_path / "full", epochs=3, ema_decay=0.9)
    full.fit()
    part = _trainer(tmp_path / "part", epochs=3, ema_decay=0.9)
    _crash_after_epoch_1(part)
    resumed = _trainer(tmp_path / "part", epochs=3, ema_decay=0.9)
    resumed.fit(resume=True)
    for k, v in _weights(full.ema.module).items():
        torch.testing.assert_close(_weights(resumed.ema.module)[k], v, rtol=1e-6, atol=1e-7)
    # a run without the average cannot be resumed with one: refused, not silently restarted
    _trainer(tmp_path / "plain", epochs=1).fit()
    with pytest.raises(ValueError, match="no moving average of the weights"):
        _trainer(tmp_path / "plain", epochs=2, ema_decay=0.9).fit(resume=True)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\) or None"):
        TrainConfig(ema_decay=decay)


def test_early_stopping(tmp_path):
    calls = iter([0.5, 0.6, 0.4, 0.3, 0.2, 0.1])
    trainer = _trainer(tmp_path, epochs=6, early_stopping_patience=2)
    trainer.config.monitor, trainer.config.monitor_mode = "dice", "max"
    trainer.validate = lambda model: {"dice": next(calls)}
    result = trainer.fit()
    assert result.stopped_early and result.best_epoch == 1 and len(result.history) == 4


def test_partial_weight_load_reports(tmp_path):
    src = build_network("resnet3d", num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_network("resnet3d", num_classes=1)
    report = load_partial_weights(dst, tmp_path / "w.pt")
    assert [m[0] for m in report.shape_mismatch] == ["fc.weight", "fc.bias"]
    assert "conv1.weight" in report.matched and not report.missing and not report.unexpected
    torch.testing.assert_close(dst.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # a checkpoint
    other = build_network("resnet3d", layers=(1, 1, 1, 2))
    report = load_partial_weights(other, tmp_path / "ckpt.pt")
    assert any(k.startswith("layer4.1.") for k in report.missing)
    with pytest.raises(InputError):
        load_partial_weights(dst, tmp_path / "nope.pt")


def test_cutmix_mixes_labels_by_kept_volume():
    images = torch.stack([torch.zeros(1, 8, 8, 8), torch.ones(1, 8, 8, 8)])
    labels = torch.tensor([[0.0], [1.0]])
    mix = CutMixBatch(alpha=1.0, prob=1.0).set_random_state(0)
    out_img, out_lab = mix(images, labels)
    # each sample's label equals the fraction of its voxels that came from the "ones" image
    np.testing.assert_allclose(
        out_lab[:, 0].numpy(), out_img.mean(dim=(1, 2, 3, 4)).numpy(), atol=1e-6
    )


def test_training_data_hash_follows_content(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"123")
    h1 = training_data_hash({"training": [{"image": str(a), "nodules": []}]})
    moved = tmp_path / "b.bin"
    a.rename(moved)
    assert training_data_hash({"training": [{"image": str(moved), "nodules": []}]}) == h1
    moved.write_bytes(b"124")
    assert training_data_hash({"training": [{"image": str(moved), "nodules": []}]}) != h1
