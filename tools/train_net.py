"""Train or evaluate Axial-DeepLab / Panoptic-DeepLab (see axial_deeplab/engine/train_net.py)."""

from axial_deeplab.engine.train_net import main

if __name__ == "__main__":
    main()
