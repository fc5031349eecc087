"""Merging evaluator states across ranks (``torch.distributed``), so that results gathered from
several processes equal a single process's."""

from __future__ import annotations

import copy
from typing import Protocol, TypeVar


class Mergeable(Protocol):
    def merge(self, other) -> None: ...


E = TypeVar("E", bound=Mergeable)


def gather(evaluator: E) -> E:
    """Every rank's evaluator merged in rank order, returned on every rank (``all_gather_object``).

    Without an initialised process group, a copy of ``evaluator``. The input is left unchanged.
    """
    from axial_deeplab.engine.distributed import all_gather_objects  # imports torch

    states = all_gather_objects(evaluator)
    merged = copy.deepcopy(states[0])
    for other in states[1:]:
        merged.merge(other)
    return merged
