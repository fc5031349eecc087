"""Layers: position-sensitive axial attention and its relative-position helpers."""

from .axial_attention import AxialAttention
from .relative_position import table_size

__all__ = ["AxialAttention", "table_size"]
