"""Evaluation: panoptic quality, mIoU and AP, equal to the official tools.

- ``panoptic``: PQ/SQ/RQ (All, Things, Stuff, per class), streaming ``PanopticEvaluator``; CLI
  ``python -m axial_deeplab.evaluation.panoptic``.
- ``panoptic_files``: COCO-format files (JSON + PNG folders), over worker processes.
- ``runs``: panoptic PNGs read as horizontal runs (the fast path of file evaluation).
- ``semantic``: confusion matrix and mIoU, streaming ``SemanticEvaluator``.
- ``instance_ap``: COCO mask AP of thing instances (pycocotools).
- ``distributed``: ``gather(evaluator)`` merges evaluator states across ranks.
- ``writers``: predictions in COCO panoptic and Cityscapes formats.
- ``synthetic``: seeded synthetic ground truth and perturbed predictions (tests, benchmarks).
"""
