"""Evaluation: panoptic quality, mIoU and AP, equal to the official tools."""
