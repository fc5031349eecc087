"""Parameters and multiply-adds of a model, per module (see ``axial_deeplab.utils.model_stats``).

    python tools/model_stats.py --config-file configs/cityscapes/axial_deeplab_l_1025x2049.yaml \\
        --input-size 1025 2049 [--backbone-only] [KEY VALUE ...]
    python tools/model_stats.py --backbone-variant axial_resnet_s --input-size 1025 2049
    python tools/model_stats.py --classifier axial26s --input-size 224 224
"""

from axial_deeplab.utils.model_stats import main

if __name__ == "__main__":
    main()
