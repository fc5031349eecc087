"""Export of the whole prediction (model + post-processing) to torch.export and ONNX.

``pipeline.PanopticPipeline`` is the graph; ``cli`` is ``tools/export.py``; ``runtime`` runs an
exported file for ``tools/infer.py --backend``. Nothing here is imported by the core package.
"""
