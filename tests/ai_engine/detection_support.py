"""The tiny detector configuration the detection tests share: the mechanics, quickly."""

from __future__ import annotations

from pathlib import Path

from ai_engine.data.datalist import write_datalist
from ai_engine.data.phantoms import write_chest_ct
from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.train import DetectionTrainOptions

TINY = DetectionConfig(
    spacing_mm=(1.5, 1.5, 1.5),  # coarser than the default
    patch_size=(32, 32, 32),
    sw_roi_size=(32, 32, 32),
    unet_channels=(4, 8, 16),
    fp_patch_size=16,
    fp_channels=(4, 8, 8, 8),
    sw_batch_size=1,
)

#: the phantom CTs of the detection tests (small enough for a CPU test)
SHAPE = (64, 64, 24)


def tiny_chest_datalist(root: Path, seeds: tuple[int, ...] = (11, 12, 13)) -> Path:
    """Phantom CTs of `seeds` under `root` (the last one validates and tests) and their
    datalist; the first two seeds must give nodules."""
    items = []
    for seed in seeds:
        nodules = write_chest_ct(root / f"ct_{seed}", seed, shape=SHAPE)
        items.append(
            {
                "image": f"ct_{seed}",
                "nodules": [{k: n[k] for k in ("center_lps_mm", "diameter_mm")} for n in nodules],
            }
        )
    assert any(it["nodules"] for it in items[:2]), "the fixture seeds must give nodules"
    return write_datalist(
        {"training": items[:-1], "validation": items[-1:], "testing": items[-1:]},
        root / "datalist.json",
    )


def tiny_train_options(**changes) -> DetectionTrainOptions:
    """A few steps of each stage: the mechanics, not a detector."""
    base = dict(
        epochs=3, steps_per_epoch=4, batch_size=2, lr=1e-2, fp_epochs=3, fp_steps_per_epoch=6,
        fp_batch_size=16, fp_lr=1e-2, warmup_steps=2, early_stopping_patience=None, seed=0,
        random_negatives=6, elastic_prob=0.0, progress=False,
    )  # fmt: skip
    return DetectionTrainOptions(**{**base, **changes})
