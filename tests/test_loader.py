"""Samplers and loaders: rank shards, resume, and identical batches for the same seed."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from axial_deeplab.config import get_cfg
from axial_deeplab.data.build import build_train_batches, build_train_dataset
from axial_deeplab.data.catalog import DatasetCatalog
from axial_deeplab.data.dataset import PanopticDataset
from axial_deeplab.data.loader import (
    InferenceSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
    collate_panoptic,
)
from axial_deeplab.data.synthetic_writer import register_synthetic, write_synthetic_dataset
from axial_deeplab.data.transforms import TrainAugmentation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> PanopticDataset:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(str(out), splits={"train": 6}, height=32, width=48, seed=0,
                            formats=("coco",))  # fmt: skip
    catalog = DatasetCatalog()
    catalog.register_coco_panoptic(
        "s",
        json_file=str(out / "coco" / "panoptic_train.json"),
        png_dir=str(out / "coco" / "panoptic" / "train"),
        image_dir=str(out / "coco" / "images" / "train"),
    )
    records, meta = catalog.get("s")
    aug = TrainAugmentation(crop_size=(24, 24), min_scale=0.5, max_scale=2.0, scale_step=0.25)
    return PanopticDataset(records, metadata=meta, transform=aug, seed=5)


@pytest.mark.parametrize("size,world_size", [(10, 2), (7, 2), (9, 3)])
def test_training_ranks_disjoint_and_covering(size, world_size):
    steps = 3 * size  # per rank: three epochs' worth of the global stream in all
    shards = [
        list(islice(TrainingSampler(size, seed=1, rank=r, world_size=world_size), steps))
        for r in range(world_size)
    ]
    # Interleaving the ranks (rank r holds global positions r, r + W, ...) gives back the
    # single-process stream, which is one permutation of range(size) per epoch.
    interleaved = [shards[p % world_size][p // world_size] for p in range(steps * world_size)]
    assert interleaved == list(islice(TrainingSampler(size, seed=1), steps * world_size))
    epoch0 = [i for e, i in interleaved if e == 0]
    assert sorted(epoch0) == list(range(size))  # disjoint shards that cover the data
    assert {i for e, i in shards[0] if e == 0}.isdisjoint(i for e, i in shards[1] if e == 0)


def test_training_sampler_resume_and_epochs():
    full = list(islice(TrainingSampler(5, seed=3, rank=1, world_size=2), 12))
    resumed = list(islice(TrainingSampler(5, seed=3, rank=1, world_size=2, start=4), 8))
    assert resumed == full[4:]
    # rank 1 of 2 holds global positions 1, 3, 5, ...: position 5 is epoch 1, item 0
    assert [e for e, _ in full[:5]] == [0, 0, 1, 1, 1]
    orders = [sorted(i for e, i in islice(TrainingSampler(4, seed=s), 4)) for s in (0, 1)]
    assert orders == [[0, 1, 2, 3]] * 2  # each epoch is a permutation
    first = [list(islice(TrainingSampler(50, seed=s), 50)) for s in (0, 1)]
    assert first[0] != first[1]  # the seed changes the order


def test_inference_sampler_shards():
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    # linspace(0, 10, 4).round() = 0, 3, 7, 10
    assert [[i for _, i in s] for s in shards] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    with pytest.raises(ValueError, match="rank"):
        InferenceSampler(10, rank=3, world_size=3)


def test_collate_stacks_equal_shapes_only():
    batch = collate_panoptic(
        [{"a": torch.zeros(2, 3), "b": torch.zeros(1, 2), "n": 1},
         {"a": torch.ones(2, 3), "b": torch.zeros(2, 2), "n": 2}]
    )  # fmt: skip
    assert batch["a"].shape == (2, 2, 3) and isinstance(batch["b"], list) and batch["n"] == [1, 2]


def batches_of(loader, count):
    return [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()}
        for b in islice(iter(loader), count)
    ]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x["image_id"] == y["image_id"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["panoptic"], y["panoptic"])


def test_same_seed_same_batches_any_worker_count(dataset):
    run1 = batches_of(build_train_loader(dataset, batch_size=2, seed=0, num_workers=0), 5)
    run2 = batches_of(build_train_loader(dataset, batch_size=2, seed=0, num_workers=2), 5)
    assert_same(run1, run2)  # 10 samples: crosses the epoch boundary at 6
    assert run1[0]["image"].shape == (2, 3, 24, 24) and run1[0]["panoptic"].dtype == torch.int64
    other = batches_of(build_train_loader(dataset, batch_size=2, seed=1, num_workers=0), 5)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(run1, other))
    resumed = batches_of(build_train_loader(dataset, batch_size=2, seed=0, start_iter=3), 2)
    assert_same(run1[3:], resumed)


def test_ranks_get_disjoint_images(dataset):
    ids = [
        [i for b in batches_of(build_train_loader(dataset, batch_size=1, seed=0, rank=r,
                                                  world_size=2), 3) for i in b["image_id"]]
        for r in range(2)
    ]  # fmt: skip
    assert not set(ids[0]) & set(ids[1]) and len(set(ids[0]) | set(ids[1])) == 6
    test_ids = [
        [i for b in build_test_loader(dataset, rank=r, world_size=2) for i in b["image_id"]]
        for r in range(2)
    ]
    assert test_ids == [[0, 1, 2], [3, 4, 5]]


def test_config_builders(tmp_path):
    write_synthetic_dataset(str(tmp_path), splits={"train": 4}, height=32, width=32)
    catalog = DatasetCatalog()
    register_synthetic(catalog, str(tmp_path), splits=("train",))
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", "('synthetic_coco_train',)", "INPUT.CROP.SIZE", "[16, 16]",
                         "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0"])  # fmt: skip
    seen = []
    ds = build_train_dataset(cfg, catalog, lambda pan, segs: seen.append(pan.shape) or {})
    batch = next(build_train_batches(cfg, ds, rank=1, world_size=2)(0))
    assert batch["image"].shape == (2, 3, 16, 16) and seen == [(16, 16)] * 2
    with pytest.raises(ValueError, match="not divisible"):
        build_train_batches(cfg, ds, world_size=3)
    assert np.isclose(ds.transform.max_scale, 2.0)
