"""The single source of configuration defaults.

Key names follow detectron2 where detectron2 has the concept (``MODEL.BACKBONE.NAME``,
``MODEL.PIXEL_MEAN``, ``SOLVER.BASE_LR``...), so that one YAML file can drive both the native engine
and the detectron2 plugin. Every key carries a one-line comment.
"""

from yacs.config import CfgNode as _YacsNode

_C = _YacsNode()
_C.VERSION = 1  # config schema version

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = _YacsNode()
_C.MODEL.META_ARCHITECTURE = "PanopticDeepLab"  # name of the meta-architecture to build
_C.MODEL.DEVICE = "cpu"  # "cpu" or "cuda"; tools fall back to cpu with a message when no GPU
_C.MODEL.WEIGHTS = ""  # path of a checkpoint to load (weights_only); empty: random init
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB mean subtracted from 0-255 input pixels
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # RGB std dividing the mean-subtracted pixels

_C.MODEL.BACKBONE = _YacsNode()
_C.MODEL.BACKBONE.NAME = "axial_resnet"  # backbone builder: "axial_resnet" or "resnet"
_C.MODEL.BACKBONE.FREEZE_AT = 0  # detectron2 key; 0 trains every stage

_C.MODEL.AXIAL_RESNET = _YacsNode()
_C.MODEL.AXIAL_RESNET.VARIANT = "axial_resnet_s"  # name in the variant table (S/M/L/XL, axial26s...)
_C.MODEL.AXIAL_RESNET.SPAN = 65  # attention span m (local) or relative-table reach (global)
_C.MODEL.AXIAL_RESNET.SPAN_MODE = "local"  # "local": m positions centred on the query; "global"
_C.MODEL.AXIAL_RESNET.OUTPUT_STRIDE = 16  # 16 (last stage not strided) or 32
_C.MODEL.AXIAL_RESNET.STRIDE_MODE = "subsample"  # "subsample" after each axis, or "avgpool" (authors')
_C.MODEL.AXIAL_RESNET.OUT_FEATURES = ["res2", "res3", "res5"]  # features returned to the decoder
_C.MODEL.AXIAL_RESNET.GRADIENT_CHECKPOINTING = False  # recompute axial blocks in backward to save memory
_C.MODEL.AXIAL_RESNET.NUM_HEADS = 8  # attention heads per axial layer

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = _YacsNode()
_C.INPUT.FORMAT = "RGB"  # channel order of images fed to the model

# ---------------------------------------------------------------------------------------------
# Data sets, data loader, solver
# ---------------------------------------------------------------------------------------------
_C.DATASETS = _YacsNode()
_C.DATASETS.TRAIN = ()  # names of training data sets
_C.DATASETS.TEST = ()  # names of evaluation data sets

_C.DATALOADER = _YacsNode()
_C.DATALOADER.NUM_WORKERS = 2  # data-loading worker processes per rank

_C.SOLVER = _YacsNode()
_C.SOLVER.BASE_LR = 1e-3  # peak learning rate
_C.SOLVER.MAX_ITER = 60000  # training iterations
_C.SOLVER.IMS_PER_BATCH = 8  # images per iteration, summed over all ranks

_C.OUTPUT_DIR = "./output"  # where checkpoints, logs and predictions go
_C.SEED = 0  # global seed; negative picks one at random and logs it
