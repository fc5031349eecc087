"""Panoptic prediction on images, folders, globs and videos (see axial_deeplab/engine/infer_net.py)."""

from axial_deeplab.engine.infer_net import main

if __name__ == "__main__":
    main()
