"""``PanopticDataset``: records -> augmented sample dicts, with per-sample seeded randomness."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import DatasetMetadata
from .check import distinct_ids
from .images import ImageDecodeError, decode_image_file
from .panoptic_io import read_panoptic_png
from .validation import DatasetFormatError, validate_segment_presence

# (image [H, W, 3] uint8, label [H, W] int64, rng) -> (image, label)
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
# (panoptic [H, W] int64, segments_info) -> dict of tensors (e.g. PanopticTargetGenerator)
TargetGenerator = Callable[[np.ndarray, Sequence[Mapping]], Mapping[str, torch.Tensor]]


def read_image(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB image; clear error when missing, truncated or undecodable
    (:func:`.images.decode_image_file`; a bad file is a :class:`DatasetFormatError`)."""
    try:
        return decode_image_file(path)
    except ImageDecodeError as exc:
        raise DatasetFormatError(str(exc)) from None


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample, a pure function of ``(seed, epoch, index)``.

    Seeding per sample (rather than per worker) makes the augmentation independent of the number
    of workers, of which worker loads the sample, and of where a resumed run starts.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


class PanopticDataset(Dataset):
    """Reads, checks and augments records (see :mod:`.catalog`).

    Indexed by ``index`` or by ``(epoch, index)`` (what the samplers of :mod:`.loader` yield); the
    random generator of a sample is :func:`sample_rng` ``(seed, epoch, index)``. A sample::

        {"image": uint8 [3, H, W] RGB, "panoptic": int64 [H, W] segment ids (0 = VOID),
         "segments_info": list (train-id categories; may list segments cropped away),
         "file_name", "image_id", "height", "width" (of the file, before augmentation),
         **target_generator(panoptic, segments_info)}

    Without a target generator (evaluation), a sample whose transform changed its size also has
    ``"panoptic_full"``: the ground truth at the file's size, which evaluation scores against.

    ``validate``: check each PNG against its segments_info and the image size when loaded
    (raises :class:`.validation.DatasetFormatError` naming the file and the ids). The entries of
    ``segments_info`` are checked by the readers when the records are built.
    """

    def __init__(
        self,
        records: Sequence[dict],
        *,
        metadata: DatasetMetadata,
        transform: Transform | None = None,
        target_generator: TargetGenerator | None = None,
        seed: int = 0,
        validate: bool = True,
    ) -> None:
        self.records = list(records)
        self.metadata = metadata
        self.transform = transform
        self.target_generator = target_generator
        self.seed = seed
        self.validate = validate

    @staticmethod
    def _check(record: dict, image: np.ndarray, panoptic: np.ndarray) -> None:
        """PNG size = image size, and PNG ids = listed ids (entries were checked on loading)."""
        png = record["pan_seg_file_name"]
        if panoptic.shape != image.shape[:2]:
            raise DatasetFormatError(
                f"{png}: PNG size (H, W) = {panoptic.shape} differs from the size "
                f"{image.shape[:2]} of the image {record['file_name']}"
            )
        listed = {int(s["id"]) for s in record["segments_info"]}
        validate_segment_presence(distinct_ids(panoptic), listed, png)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        image = read_image(record["file_name"])
        panoptic = read_panoptic_png(record["pan_seg_file_name"])
        if self.validate:
            self._check(record, image, panoptic)
        height, width = panoptic.shape
        full = panoptic
        if self.transform is not None:
            image, panoptic = self.transform(image, panoptic, sample_rng(self.seed, epoch, index))
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # [3, H, W]
            "panoptic": torch.from_numpy(np.ascontiguousarray(panoptic, dtype=np.int64)),
            "segments_info": record["segments_info"],
            "file_name": record["file_name"],
            "image_id": record["image_id"],
            "height": height,
            "width": width,
        }
        if self.target_generator is None and panoptic.shape != full.shape:  # evaluation
            sample["panoptic_full"] = torch.from_numpy(np.ascontiguousarray(full, dtype=np.int64))
        if self.target_generator is not None:
            targets = self.target_generator(panoptic, record["segments_info"])
            clash = set(targets) & set(sample)
            if clash:
                raise ValueError(f"target generator output overwrites sample keys {sorted(clash)}")
            sample.update(targets)
        return sample
