"""The synthetic data set, config and mapped batches shared by the detectron2 plugin tests
(``test_d2_plugin.py``, ``test_d2_plugin_evaluation.py``).

It imports the plugin: import it after ``pytest.importorskip("detectron2")``. A test module makes
the fixtures its own by re-exporting them (``from d2_synthetic import cfg as cfg``); there
``synthetic_dir`` is module-scoped, so each such module writes the 7-image data set once (a few
milliseconds).
"""

import pytest
from detectron2.data import DatasetCatalog

from axial_deeplab.config import load_config as native_load_config
from axial_deeplab.d2 import AxialDeepLabDatasetMapper, load_config, register_datasets
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset

SYNTHETIC_YAML = "configs/quickstart/synthetic_axial.yaml"
SMALL = ["INPUT.CROP.SIZE", "[48, 64]", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("d2_synthetic")
    write_synthetic_dataset(
        str(out), splits={"train": 4, "val": 3}, height=48, width=64, seed=3, formats=("coco",)
    )
    return str(out)


@pytest.fixture
def cfg(synthetic_dir):
    cfg = load_config(SYNTHETIC_YAML, SMALL)
    register_datasets(cfg, synthetic_dir=synthetic_dir)
    return cfg


def _native(opts=()):
    return native_load_config(SYNTHETIC_YAML, SMALL + list(opts))


def _mapped(cfg, split: str, is_train: bool) -> list[dict]:
    name = f"synthetic_coco_{split}"
    mapper = AxialDeepLabDatasetMapper(cfg, is_train=is_train, dataset_name=name)
    return [mapper(d) for d in DatasetCatalog.get(name)]
