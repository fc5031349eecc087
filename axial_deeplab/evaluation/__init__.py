"""Evaluation: panoptic quality, mIoU and AP, equal to the official tools.

- ``panoptic``: PQ/SQ/RQ (All, Things, Stuff, per class), streaming ``PanopticEvaluator``; CLI
  ``python -m axial_deeplab.evaluation.panoptic``.
- ``panoptic_files``: COCO-format files (JSON + PNG folders), over worker processes.
- ``overlaps``: gt x prediction overlap areas of a batch of images in one pass.
- ``runs``: panoptic PNGs read as horizontal runs (the fast path of file evaluation).
- ``parallel``: ``map_batches``, batches handed out to worker processes, results in order.
- ``semantic``: confusion matrix and mIoU, streaming ``SemanticEvaluator``.
- ``instance_ap``: COCO mask AP of thing instances (pycocotools).
- ``cityscapes_official``: cityscapesscripts' own instance AP, pixel-level IoU and PQ run on
  saved predictions (``run_cityscapes_official``).
- ``distributed``: ``gather(evaluator)`` merges evaluator states across ranks.
- ``writers``: predictions in COCO panoptic and Cityscapes formats.
- ``synthetic``: seeded synthetic ground truth and perturbed predictions (tests, benchmarks).
"""
