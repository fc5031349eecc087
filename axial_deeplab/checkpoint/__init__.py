"""Checkpoint conversion and safe saving/loading."""
