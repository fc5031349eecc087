"""Convert a deeplab2 (TensorFlow) checkpoint to ours (see axial_deeplab/checkpoint/convert_deeplab2.py).

python tools/convert_deeplab2.py CKPT.tar.gz OUT.pth --config-file configs/cityscapes/deeplab2/X.yaml
"""

from axial_deeplab.checkpoint.convert_deeplab2 import main

if __name__ == "__main__":
    main()
