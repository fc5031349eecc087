"""Convert a detectron2 Panoptic-DeepLab checkpoint (see ``axial_deeplab.checkpoint.detectron2``).

python tools/convert_detectron2.py model_final_23d03a.pkl out.pth \
    --config-file configs/cityscapes/panoptic_deeplab_r52_dc5_dsconv_d2.yaml
"""

import sys

from axial_deeplab.checkpoint.detectron2 import main

if __name__ == "__main__":
    sys.exit(main())
