"""Backbones: Axial-ResNet (panoptic and ImageNet variants) and ResNet."""
