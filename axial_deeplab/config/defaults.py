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

_C.MODEL.AXIAL_RESNET = _YacsNode()
_C.MODEL.AXIAL_RESNET.VARIANT = (
    "axial_resnet_s"  # name in the variant table (S/M/L/XL, axial26s...)
)
_C.MODEL.AXIAL_RESNET.SPAN = 65  # span m (local) or table reach (global); 0: the variant's
_C.MODEL.AXIAL_RESNET.SPAN_MODE = (
    ""  # "local" (m centred), "global", "hybrid", "block"; "": variant's
)
_C.MODEL.AXIAL_RESNET.OUTPUT_STRIDE = 16  # 16 (last stage not strided) or 32
_C.MODEL.AXIAL_RESNET.STRIDE_MODE = (
    ""  # "subsample" after each axis, "avgpool" (authors'); "": variant's
)
_C.MODEL.AXIAL_RESNET.STEM = ""  # "inception", "conv7" or "axial" (full attention); "": variant's
_C.MODEL.AXIAL_RESNET.OUT_FEATURES = ["res2", "res3", "res5"]  # features returned to the decoder
_C.MODEL.AXIAL_RESNET.GRADIENT_CHECKPOINTING = (
    False  # recompute axial blocks in backward to save memory
)
_C.MODEL.AXIAL_RESNET.NUM_HEADS = 8  # attention heads per axial layer
_C.MODEL.AXIAL_RESNET.WIDTH_MULTIPLIER = 0.0  # channel width multiplier; 0: the variant's
_C.MODEL.AXIAL_RESNET.STEM_WIDTH_MULTIPLIER = 0.0  # stem width multiplier; 0: the variant's
_C.MODEL.AXIAL_RESNET.LAYER_MULTIPLIER = 0.0  # deeplab2 encoders: blocks x this; 0: variant's
_C.MODEL.AXIAL_RESNET.DROP_PATH_KEEP_PROB = 0.0  # drop-path keep prob (last stage); 0: variant's
_C.MODEL.AXIAL_RESNET.DROP_PATH_SCHEDULE = ""  # "constant" or "linear" over stages; "": variant's

_C.MODEL.BATCH_NORM = _YacsNode()
_C.MODEL.BATCH_NORM.EPS = 1e-5  # epsilon of every batch norm (1e-3 for weights trained in Keras)
_C.MODEL.BATCH_NORM.MOMENTUM = 0.1  # PyTorch running-stat momentum (Keras 0.99 is 0.01 here)

_C.MODEL.RESNETS = _YacsNode()
_C.MODEL.RESNETS.DEPTH = 50  # torchvision ResNet depth: 50, 101 or 152
_C.MODEL.RESNETS.STEM_TYPE = "basic"  # "basic" (7x7 conv) or "deeplab" (three 3x3 convs, 128 out)
_C.MODEL.RESNETS.RES5_DILATION = 2  # 2: output stride 16 (res5 dilated); 1: output stride 32
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res5"]  # features returned to the decoders
_C.MODEL.RESNETS.NORM = "BN"  # "BN" or "SyncBN"
_C.MODEL.RESNETS.RES5_MULTI_GRID = []  # detectron2 key: res5 dilations = RES5_DILATION x these
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256  # detectron2 key: res2 width (x2 per stage; stem: /2)

_C.MODEL.SEM_SEG_HEAD = _YacsNode()
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res5"]  # decoder inputs; last one -> context
_C.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [32, 64]  # 1x1 projection width of res2, res3
_C.MODEL.SEM_SEG_HEAD.CONTEXT = "conv1x1"  # "conv1x1" (Axial-DeepLab) or "aspp" (Panoptic-DeepLab)
_C.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 256  # output width of the context module
_C.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12, 18]  # ASPP rates; (3, 6, 9) at output stride 32
_C.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.1  # dropout after the ASPP projection
_C.MODEL.SEM_SEG_HEAD.ASPP_DEPTHWISE_SEPARABLE_CONV = False  # atrous branches depthwise-separable
_C.MODEL.SEM_SEG_HEAD.ASPP_POOL_SIZE = []  # image pooling window [h, w] in feature px; []: global
_C.MODEL.SEM_SEG_HEAD.ASPP_POOL_NORM = False  # pooling conv: no bias + norm (deeplab2); else bias
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256  # decoder fusion width
_C.MODEL.SEM_SEG_HEAD.HEAD_CHANNELS = 256  # width of the head's 5x5 depthwise-separable conv
_C.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = True  # fusion, head: 5x5 DS conv; else 2 3x3
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19  # semantic classes (train ids)
# VOID_CLASS: the argmax still runs over all NUM_CLASSES outputs; pixels won by the void channel
# are void (no segment, no class), channels above it are data-set classes shifted down by one.
_C.MODEL.SEM_SEG_HEAD.VOID_CLASS = -1  # output channel meaning void, no class (deeplab2 COCO: 0)
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255  # semantic label ignored by the loss
_C.MODEL.SEM_SEG_HEAD.NORM = "BN"  # "BN", "SyncBN" or "GN" in decoder and head
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0  # weight of the semantic loss
_C.MODEL.SEM_SEG_HEAD.LOSS_TOP_K = 0.2  # fraction of hardest pixels kept by the semantic loss

_C.MODEL.INS_EMBED_HEAD = _YacsNode()
_C.MODEL.INS_EMBED_HEAD.IN_FEATURES = ["res2", "res3", "res5"]  # decoder inputs; last -> context
_C.MODEL.INS_EMBED_HEAD.PROJECT_CHANNELS = [16, 32]  # 1x1 projection width of res2, res3
_C.MODEL.INS_EMBED_HEAD.CONTEXT = "conv1x1"  # "conv1x1" (Axial-DeepLab) or "aspp"
_C.MODEL.INS_EMBED_HEAD.ASPP_CHANNELS = 256  # output width of the context module
_C.MODEL.INS_EMBED_HEAD.ASPP_DILATIONS = [6, 12, 18]  # ASPP rates; (3, 6, 9) at output stride 32
_C.MODEL.INS_EMBED_HEAD.ASPP_DROPOUT = 0.1  # dropout after the ASPP projection
_C.MODEL.INS_EMBED_HEAD.ASPP_DEPTHWISE_SEPARABLE_CONV = False  # atrous branches depthwise-separable
_C.MODEL.INS_EMBED_HEAD.ASPP_POOL_SIZE = []  # image pooling window [h, w] in feature px; []: global
_C.MODEL.INS_EMBED_HEAD.ASPP_POOL_NORM = False  # pooling conv: no bias + norm (deeplab2); else bias
_C.MODEL.INS_EMBED_HEAD.CONVS_DIM = 128  # decoder fusion width
_C.MODEL.INS_EMBED_HEAD.HEAD_CHANNELS = 32  # width of the centre/offset heads' 5x5 conv
_C.MODEL.INS_EMBED_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = True  # fusion, offset head: 5x5 DS
_C.MODEL.INS_EMBED_HEAD.CENTER_USE_DEPTHWISE_SEPARABLE_CONV = True  # centre head (d2: False)
_C.MODEL.INS_EMBED_HEAD.NORM = "BN"  # "BN", "SyncBN" or "GN" in decoder and heads
_C.MODEL.INS_EMBED_HEAD.CENTER_LOSS_WEIGHT = 200.0  # weight of the centre MSE loss
_C.MODEL.INS_EMBED_HEAD.OFFSET_LOSS_WEIGHT = 0.01  # weight of the offset L1 loss

_C.MODEL.PANOPTIC_DEEPLAB = _YacsNode()
_C.MODEL.PANOPTIC_DEEPLAB.ALIGN_CORNERS = True  # bilinear upsampling convention in decoder/outputs
_C.MODEL.PANOPTIC_DEEPLAB.STUFF_AREA = 2048  # stuff regions smaller than this become void
_C.MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD = 0.1  # minimum centre heatmap score
_C.MODEL.PANOPTIC_DEEPLAB.NMS_KERNEL = 7  # max-pool window of centre NMS
_C.MODEL.PANOPTIC_DEEPLAB.TOP_K_INSTANCE = 200  # centres kept: scores above the k-th best (< k)

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = _YacsNode()
_C.INPUT.FORMAT = "RGB"  # channel order of images fed to the model
_C.INPUT.GAUSSIAN_SIGMA = 8.0  # std of the centre-heatmap Gaussian, in pixels
_C.INPUT.SMALL_INSTANCE_AREA = 4096  # thing instances below this area get a larger semantic weight
_C.INPUT.SMALL_INSTANCE_WEIGHT = 3.0  # that semantic loss weight
_C.INPUT.IGNORE_CROWD_IN_SEMANTIC = False  # True: crowd pixels are ignored by the semantic loss
# True: a crowd region of a thing class gets a centre and offsets like an instance, so that inference
# groups its pixels apart (PQ ignores that segment) instead of into the instances around it.
_C.INPUT.CROWD_AS_INSTANCE = False
_C.INPUT.MIN_SCALE = 0.5  # smallest random scale factor of training images
_C.INPUT.MAX_SCALE = 2.0  # largest random scale factor of training images
_C.INPUT.SCALE_STEP = 0.25  # scale factors min, min+step, ..., max; 0: continuous uniform draw
_C.INPUT.RANDOM_FLIP = "horizontal"  # detectron2 key: "horizontal" (p = 0.5) or "none"
_C.INPUT.CROP = _YacsNode()
_C.INPUT.CROP.ENABLED = True  # detectron2 key: random crop after scaling (padding if smaller)
_C.INPUT.CROP.SIZE = [512, 1024]  # detectron2 key: crop (height, width) in pixels
_C.INPUT.CROP.RANDOM_PAD = (
    False  # True: image placed at a random spot in the padding, else top-left
)
_C.INPUT.MIN_SIZE_TEST = 0  # detectron2 key: test short side in pixels; 0 keeps the file's size
_C.INPUT.MAX_SIZE_TEST = 0  # detectron2 key: cap on the test long side; 0: no cap

# ---------------------------------------------------------------------------------------------
# Data sets, data loader, solver
# ---------------------------------------------------------------------------------------------
_C.DATASETS = _YacsNode()
_C.DATASETS.TRAIN = ()  # names of training data sets
_C.DATASETS.TEST = ()  # names of evaluation data sets
_C.DATASETS.ROOT = ""  # data set root; empty: $DETECTRON2_DATASETS, else ./datasets
_C.DATASETS.CUSTOM = []  # extra data sets: dicts NAME, JSON_FILE, PNG_DIR, IMAGE_DIR [, FORMAT]
_C.DATASETS.SYNTHETIC_DIR = ""  # quick-start scenes there: synthetic_{coco,cityscapes}_{train,val}
_C.DATASETS.FULL_VALIDATION = False  # True: read every PNG and image header before training

_C.DATALOADER = _YacsNode()
_C.DATALOADER.NUM_WORKERS = 2  # data-loading worker processes per rank
_C.DATALOADER.VALIDATE_SAMPLES = True  # check each PNG against its segments_info on load

_C.SOLVER = _YacsNode()
_C.SOLVER.BASE_LR = 1e-3  # peak learning rate
_C.SOLVER.MAX_ITER = 60000  # training iterations
_C.SOLVER.IMS_PER_BATCH = 8  # images per iteration, summed over all ranks
_C.SOLVER.OPTIMIZER = (
    "adam"  # "adam" (deeplab2's Panoptic/Axial-DeepLab), "radam_lookahead" or "sgd"
)
_C.SOLVER.BETAS = (0.9, 0.999)  # Adam/RAdam betas
_C.SOLVER.WEIGHT_DECAY = 0.0  # L2 decay on conv/linear weights (not norms, biases, rel. tables)
_C.SOLVER.POLY_LR_POWER = 0.9  # poly schedule: lr * (1 - it / MAX_ITER) ** power
_C.SOLVER.WARMUP_ITERS = 0  # linear warm-up iterations
_C.SOLVER.WARMUP_FACTOR = 0.001  # LR multiplier at the first warm-up iteration
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations between checkpoints (and one at the end)
_C.SOLVER.CLIP_GRADIENTS = 0.0  # max gradient L2 norm; 0 disables clipping
_C.SOLVER.AMP = False  # automatic mixed precision (fp16 on GPUs, bf16 on CPUs)

_C.TEST = _YacsNode()
_C.TEST.EVAL_PERIOD = 0  # iterations between evaluations; 0: only at the end
_C.TEST.PAD_TO_CROP = False  # pad eval inputs to INPUT.CROP.SIZE (pixel mean) as training crops
_C.TEST.SAVE_PREDICTIONS = False  # --eval-only: write official-format files to OUTPUT_DIR/inference
_C.TEST.NUM_PICTURES = 8  # --eval-only: draw the first N images (prediction beside ground truth)
_C.TEST.AMP = False  # evaluation/inference in bf16 (CPUs with AVX512-BF16/AMX) or fp16 (GPUs)
_C.TEST.AUG = _YacsNode()
_C.TEST.AUG.ENABLED = False  # detectron2 key: test-time augmentation in inference (tools/infer.py)
_C.TEST.AUG.FLIP = True  # detectron2 key: when enabled, add a horizontally flipped pass per scale
_C.TEST.AUG.SCALES = [1.0]  # when enabled, input scale factors; outputs averaged at input size

_C.OUTPUT_DIR = "./output"  # where checkpoints, logs and predictions go
_C.LOG_PERIOD = 20  # iterations between metrics.json records
_C.VIS_PERIOD = 0  # detectron2 key: iterations between TensorBoard pictures of a batch; 0: none
_C.SEED = 0  # global seed; negative: a random one, printed and written to config.yaml
