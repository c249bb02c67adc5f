"""Datasets and loaders for training: MONAI CacheDataset plus per-epoch deterministic loading."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset

from ai_engine.training.reproducibility import derive_seed


def make_dataset(
    items: Sequence[dict[str, Any]],
    transform: Callable[..., Any],
    *,
    cache: bool = True,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    progress: bool = False,
) -> Dataset:
    """A MONAI dataset over `items`: `CacheDataset` (deterministic transforms run once, cached)
    unless `cache` is False."""
    if cache:
        return CacheDataset(
            data=list(items),
            transform=transform,
            cache_rate=cache_rate,
            num_workers=num_workers,
            progress=progress,
        )
    return Dataset(data=list(items), transform=transform)


class EpochLoader:
    """Batches for epoch `e` drawn from a loader seeded by (seed, e[, cycle]).

    Shuffling and every MONAI random transform are seeded from the loader's generator (MONAI's
    `DataLoader` reseeds the dataset's transforms from it), so epoch `e` gives the same batches
    whether or not the run was interrupted and resumed before it.

    Args:
        dataset: a MONAI dataset (its transform may be random).
        batch_size: samples per batch (after any multi-sample crop is flattened).
        shuffle: shuffle the order each epoch.
        seed: base seed of the run.
        num_workers: loader worker processes.
        collate_fn: optional collate function (MONAI's `list_data_collate` by default).
        drop_last: drop an incomplete last batch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        collate_fn: Callable[..., Any] | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.drop_last = drop_last

    def loader(self, epoch: int, cycle: int = 0) -> DataLoader:
        """The loader of one pass (`cycle`) of epoch `epoch`."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch, cycle))
        kwargs: dict[str, Any] = {}
        if self.collate_fn is not None:
            kwargs["collate_fn"] = self.collate_fn
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            num_workers=self.num_workers,
            generator=generator,
            drop_last=self.drop_last,
            **kwargs,
        )

    def batches(self, epoch: int, *, endless: bool = False) -> Iterator[Any]:
        """Batches of epoch `epoch`: one pass, or passes with fresh seeds forever if `endless`."""
        cycle = 0
        while True:
            yield from self.loader(epoch, cycle)
            if not endless:
                return
            cycle += 1

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _digest_path(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (relative name, file digest) list."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(_digest_path(f).encode())
    elif path.is_file():
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(b"<missing>")
    return h.hexdigest()


def training_data_hash(
    splits: dict[str, Sequence[dict[str, Any]]], path_keys: Sequence[str] = ("image",)
) -> dict[str, Any]:
    """A content hash of a datalist: its items (annotations included) with every image path
    replaced by the digest of the file or folder it names, so renaming or moving data keeps the
    hash and changing one voxel or one label changes it.

    Returns:
        `{"sha256": ..., "n_items": {split: n}}`.
    """
    canon: dict[str, list[Any]] = {}
    for split, items in sorted(splits.items()):
        rows = []
        for item in items:
            row = dict(item)
            for key in path_keys:
                if key in row and isinstance(row[key], str | Path):
                    row[key] = _digest_path(Path(row[key]))
            rows.append(row)
        canon[split] = rows
    text = json.dumps(canon, sort_keys=True, default=str)
    return {
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "n_items": {k: len(v) for k, v in canon.items()},
    }
