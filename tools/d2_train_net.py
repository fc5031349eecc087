"""Train or evaluate Axial-DeepLab with detectron2's ``launch`` and ``DefaultTrainer``.

    python tools/d2_train_net.py --config-file configs/coco/axial_deeplab_s_641.yaml --num-gpus 8
    python tools/d2_train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/d2_train_net.py --config-file configs/quickstart/synthetic_axial.yaml \
        --synthetic-dir output/d2_synthetic/data SOLVER.MAX_ITER 20

Needs detectron2 (README, "detectron2 plugin"); the logic lives in ``axial_deeplab.d2.train``.
"""

import sys
import warnings

if __name__ == "__main__":
    # detectron2 decorates a few functions with torch.jit.script, which torch 2.14 deprecates:
    # two FutureWarnings at every start that a user of this command can do nothing about.
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    try:
        from axial_deeplab.d2.train import run
    except ImportError as exc:  # detectron2 missing: its install line, not two tracebacks
        sys.exit(f"error: {exc}")
    run()
