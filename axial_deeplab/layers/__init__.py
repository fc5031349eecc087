"""Layers: position-sensitive axial attention and its relative-position helpers."""

from .axial_attention import AxialAttention
from .relative_position import local_mask, relative_index, table_size

__all__ = ["AxialAttention", "local_mask", "relative_index", "table_size"]
