"""Convert the authors' Axial-ResNet checkpoint to ours (see ``axial_deeplab.checkpoint.authors``).

python tools/convert_weights.py axial26s.pth axial26s_converted.pth --variant axial26s
"""

import sys

from axial_deeplab.checkpoint.authors import main

if __name__ == "__main__":
    sys.exit(main())
