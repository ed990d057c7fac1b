"""The core options of the toolkit, each with its default, a one-line comment and its rule.

A component's own options (``MODEL.LFM``, ``MODEL.DROPBLOCK``, ``MODEL.TRIPLET``, ``TEST.ATTACK``...) live
in the component's module, next to the code that reads them, and are added here when it registers
(:mod:`reid.config.configurable`); ``python -m reid.config`` lists every key. Experiment files override a
subset of the keys (and may inherit from another file through ``_BASE_``); command-line ``KEY VALUE``
pairs override last. Defaults reproduce BoT (reid-strong-baseline) on Market-1501 with a ResNet-50, LFM off.

The rules below the keys (choices, ranges) are checked whenever a config is loaded.
"""

from __future__ import annotations

from typing import Any

from yacs.config import CfgNode as CN

_C = CN()

_C.SEED = 0  # seeds python, numpy and torch; a negative value draws a random seed (logged)
_C.OUTPUT_DIR = "output/default"  # logs, metrics.jsonl, checkpoints, results.json and pictures go here
_C.DEVICE = "auto"  # "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"
_C.DETERMINISTIC = False  # torch.use_deterministic_algorithms; slower on CUDA, CPU runs are reproducible anyway

# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.BACKBONE = "resnet50"  # a name in BACKBONE_REGISTRY; built in: resnet18/34/50/101 (torchvision), "timm:<name>"
_C.MODEL.LAST_STRIDE = 1  # stride of the last stage; BoT uses 1 for a 16x8 final map at 256x128
_C.MODEL.PRETRAINED = True  # start from ImageNet weights (local file only); False trains from scratch
_C.MODEL.PRETRAINED_PATH = ""  # ImageNet weights file; empty = look in the torch hub cache
_C.MODEL.PIXEL_MEAN = (0.485, 0.456, 0.406)  # RGB mean in [0, 1]; normalisation happens inside the model
_C.MODEL.PIXEL_STD = (0.229, 0.224, 0.225)  # RGB std in [0, 1]
_C.MODEL.POOLING = "avg"  # global pooling: "avg" (BoT) or "gem" (generalised mean, p=3)
_C.MODEL.NECK = "bnneck"  # "bnneck" (BatchNorm1d, frozen zero bias) or "none"
_C.MODEL.NECK_FEAT = "after"  # inference feature: "after" (post-BNNeck) or "before" the neck
_C.MODEL.LOSSES = ("ce", "triplet")  # LOSS_REGISTRY names, summed; built in: "ce" (smoothed ID), "triplet", "center"

# Train-only regulariser inserted at one backbone stage; this is where LFM lives. Each regulariser's own
# options (MODEL.LFM, MODEL.DROPOUT, MODEL.DROPBLOCK) are in its module under reid/modeling/regularizers/.
_C.MODEL.REGULARIZER = CN()
_C.MODEL.REGULARIZER.NAME = "none"  # REGULARIZER_REGISTRY name, e.g. none, lfm, dropout, spatial_dropout, dropblock
_C.MODEL.REGULARIZER.STAGE = "conv1"  # "conv1" (paper), "stem" (after max-pool), "layer1", "layer2" or a module path

# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.SIZE_TRAIN = (256, 128)  # (height, width) of training images
_C.INPUT.SIZE_TEST = (256, 128)  # (height, width) of test images
_C.INPUT.FLIP_PROB = 0.5  # probability of a horizontal flip
_C.INPUT.PADDING = 10  # zero padding before the random crop back to SIZE_TRAIN; 0 disables
_C.INPUT.RE_PROB = 0.5  # probability of random erasing (input-level, filled with the pixel mean)
_C.INPUT.RE_AREA = (0.02, 0.4)  # random erasing area range, fraction of the image
_C.INPUT.RE_STYLE = "bot"  # "bot" (BoT: uniform aspect, 100 tries, fill = PIXEL_MEAN once normalised) or "torchvision"
_C.INPUT.MAX_IMAGE_PIXELS = 50_000_000  # images with more pixels are refused from their header, before decoding

# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.ROOT = "datasets"  # folder holding market1501/, DukeMTMC-reID/, MSMT17/, synthetic_*/
_C.DATASETS.TRAIN = ("market1501",)  # registered dataset names whose train subsets are merged
_C.DATASETS.TEST = ("market1501",)  # every dataset evaluated (query vs gallery) after training and by tools/test.py
_C.DATASETS.ALLOW_CHANGES = False  # a subset that changed since the run recorded it only warns instead of stopping

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4  # loader processes; 0 loads in the main process
_C.DATALOADER.SAMPLER = "pk"  # "pk" (P identities x K images, needed by triplet) or "random"
_C.DATALOADER.NUM_INSTANCE = 4  # K: images per identity in a batch; P = IMS_PER_BATCH / K
_C.DATALOADER.BACKEND = "auto"  # "tensor" (decoded once, augmented in batches on the device), "workers" or "auto"
_C.DATALOADER.TENSOR_BUDGET_GB = 0.0  # "auto" picks "tensor" when decoded train+test fit this; 0: half device memory
_C.DATALOADER.CACHE_DIR = ""  # decoded-image cache; "" = $XDG_CACHE_HOME/lfm-reid (or ~/.cache/lfm-reid), "none" = off

# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "adam"  # "adam", "adamw" or "sgd"
_C.SOLVER.BASE_LR = 3.5e-4  # peak learning rate (after warm-up)
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.NESTEROV = False  # SGD Nesterov momentum
_C.SOLVER.WEIGHT_DECAY = 5e-4  # weight decay of conv/linear weights
_C.SOLVER.WEIGHT_DECAY_NORM = 5e-4  # weight decay of normalisation-layer parameters
_C.SOLVER.WEIGHT_DECAY_BIAS = 5e-4  # weight decay of biases
_C.SOLVER.BIAS_LR_FACTOR = 1.0  # lr multiplier of biases (BoT: 1; detectron2 often 2)
_C.SOLVER.SCHED = "multistep"  # "multistep" (BoT), "cosine" or "constant" (BASE_LR after the warm-up)
_C.SOLVER.STEPS = (40, 70)  # multistep: epochs where the lr is multiplied by GAMMA
_C.SOLVER.GAMMA = 0.1  # multistep decay factor
_C.SOLVER.MIN_LR_FACTOR = 0.0  # cosine: final lr as a fraction of BASE_LR
_C.SOLVER.WARMUP_EPOCHS = 10  # linear warm-up length in epochs, stepped per iteration; 0 disables
_C.SOLVER.WARMUP_FACTOR = 0.01  # warm-up starts at BASE_LR * WARMUP_FACTOR
_C.SOLVER.MAX_EPOCHS = 120  # training length
_C.SOLVER.IMS_PER_BATCH = 64  # images per optimisation step, summed over all processes
_C.SOLVER.AMP = True  # mixed precision on CUDA (ignored on CPU, which trains in fp32)
_C.SOLVER.AMP_DTYPE = "bf16"  # "bf16" or "fp16" (fp16 uses a gradient scaler)
_C.SOLVER.CHANNELS_LAST = True  # channels_last memory format on CUDA
_C.SOLVER.CHECKPOINT_PERIOD = 10  # save a numbered checkpoint every N epochs (last.pth is saved every epoch)
_C.SOLVER.LOG_PERIOD = 20  # log a status line every N iterations
_C.SOLVER.TENSORBOARD = True  # also write TensorBoard events into OUTPUT_DIR/tensorboard (tensorboard package)
_C.SOLVER.GRAD_CLIP = 0.0  # clip the gradient norm to this value; 0 disables
_C.SOLVER.COMPILE = "auto"  # torch.compile the training model: "auto" (CUDA only), "on" or "off"; falls back on failure

# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = 128  # images per batch when extracting features
_C.TEST.EVAL_PERIOD = 10  # evaluate every N epochs during training (and always at the end); 0 = only at the end
_C.TEST.METRIC = "cosine"  # "cosine" or "euclidean"
_C.TEST.FEAT_NORM = True  # L2-normalise features before matching (and in exported models)
_C.TEST.FLIP = False  # average the features of an image and its horizontal flip
_C.TEST.AMP = True  # extract features under bf16 autocast on CUDA (faster; fp32 on CPU); False for fp32 everywhere
_C.TEST.RERANK = False  # also report k-reciprocal re-ranking (Zhong et al., CVPR 2017)
_C.TEST.RERANK_K1 = 20  # re-ranking k1
_C.TEST.RERANK_K2 = 6  # re-ranking k2
_C.TEST.RERANK_LAMBDA = 0.3  # re-ranking weight of the original distance
_C.TEST.MAX_RANK = 50  # length of the CMC curve
_C.TEST.BEST_METRIC = "mAP"  # "mAP", "R1" or "mINP": keeps best.pth by this metric on the first test dataset
_C.TEST.WEIGHTS = ""  # checkpoint evaluated by tools/test.py when --weights is not given
_C.TEST.REPORT = True  # write OUTPUT_DIR/report.html after tools/test.py and the last evaluation of training
_C.TEST.REPORT_QUERIES = 8  # worst and best queries the report shows as ranked lists (each)
_C.TEST.REPORT_CAMERA_PAIRS = True  # the report's R1/mAP per (query camera, gallery camera): about one more ranking

# ---------------------------------------------------------------------------------------------
# Rules of the core keys, checked on every load (reid.config.loader.finalize_config).
CHOICES: dict[str, tuple[str, ...]] = {
    "MODEL.NECK": ("bnneck", "none"),
    "MODEL.NECK_FEAT": ("after", "before"),
    "MODEL.POOLING": ("avg", "gem"),
    "SOLVER.SCHED": ("multistep", "cosine", "constant"),
    "SOLVER.AMP_DTYPE": ("bf16", "fp16"),
    "SOLVER.COMPILE": ("auto", "on", "off"),
    "DATALOADER.SAMPLER": ("pk", "random"),
    "TEST.METRIC": ("cosine", "euclidean"),
    "TEST.BEST_METRIC": ("mAP", "R1", "mINP"),
    "INPUT.RE_STYLE": ("bot", "torchvision"),
    "DATALOADER.BACKEND": ("auto", "tensor", "workers"),
}
POSITIVE = ("SOLVER.BASE_LR", "SOLVER.MAX_EPOCHS", "SOLVER.IMS_PER_BATCH", "TEST.IMS_PER_BATCH",
            "DATALOADER.NUM_INSTANCE", "TEST.MAX_RANK", "SOLVER.LOG_PERIOD")
AT_LEAST_ONE = ("TEST.RERANK_K1", "TEST.RERANK_K2", "INPUT.MAX_IMAGE_PIXELS")
NON_NEGATIVE = ("DATALOADER.NUM_WORKERS", "SOLVER.WARMUP_EPOCHS", "TEST.EVAL_PERIOD", "SOLVER.CHECKPOINT_PERIOD",
                "TEST.REPORT_QUERIES", "DATALOADER.TENSOR_BUDGET_GB")
PROBABILITIES = ("INPUT.FLIP_PROB", "INPUT.RE_PROB", "TEST.RERANK_LAMBDA")
AREA_RANGES = ("INPUT.RE_AREA",)  # (low, high) with 0 < low <= high <= 1
IMAGE_SIZES = ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST")  # (height, width), both positive
RGB_TRIPLES = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")
NON_EMPTY = {"DATASETS.TRAIN": "a registered dataset such as market1501", "DATASETS.TEST": "a registered dataset such "
             "as market1501", "MODEL.LOSSES": "a registered loss such as ce or triplet"}


#: Keys added after runs were already being made, whose default now differs from what the code did before the
#: key existed: ``KEY: (the earlier value, the key that must be non-zero for it to matter, or None)``. A stored
#: config (a checkpoint's, a study cell's) without KEY was made with the earlier value.
VALUES_BEFORE_KEY_EXISTED = {
    "INPUT.RE_STYLE": ("torchvision", "INPUT.RE_PROB"),  # erasing was torchvision's until BoT's became the default
}


def get_cfg_defaults() -> CN:
    """A fresh, mutable copy of the defaults (core keys and every registered component's node)."""
    return _C.clone()


def add_node(path: str, values: dict[str, Any]) -> None:
    """Add a component's node (``MODEL.LFM``) with its default ``values``; registering the same node again
    with the same defaults (two regularisers sharing ``MODEL.DROPOUT``) is a no-op."""
    parent_path, _, name = path.rpartition(".")
    parent = _C
    for part in parent_path.split(".") if parent_path else ():
        parent = parent[part]
    if name in parent:
        existing = parent[name]
        if not isinstance(existing, CN) or dict(existing) != values:
            raise KeyError(f"Config node {path} is already defined with other keys or defaults: {existing!r}")
        return
    parent[name] = CN(values)
