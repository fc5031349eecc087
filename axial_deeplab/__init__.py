"""axial-deeplab: Axial-DeepLab panoptic segmentation in PyTorch."""

__version__ = "0.1.0"
