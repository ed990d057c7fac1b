"""Data: dataset parsers and registry, image reading, BoT transforms, the PK sampler, the loaders of both
backends (worker processes, or decoded tensors augmented on the device) and the decoded-image cache."""

from reid.data.datasets import (
    DATASET_REGISTRY,
    ImageRecord,
    ReIDDataset,
    build_dataset,
    check_datasets,
)
from reid.data.io import read_image
from reid.data.loaders import (
    ImageDataset,
    TestData,
    TrainData,
    build_image_loader,
    build_test_data,
    build_test_loader,
    build_train_data,
    build_train_loader,
    plan_backend,
)
from reid.data.samplers import PKSampler
from reid.data.tensor_cache import decode_images
from reid.data.tensor_loaders import TensorTestLoader, TensorTrainLoader, augmentation_seed
from reid.data.transforms import build_transforms, to_tensor_image

__all__ = [
    "DATASET_REGISTRY",
    "ImageDataset",
    "ImageRecord",
    "PKSampler",
    "ReIDDataset",
    "TensorTestLoader",
    "TensorTrainLoader",
    "TestData",
    "TrainData",
    "augmentation_seed",
    "build_dataset",
    "build_image_loader",
    "build_test_data",
    "build_test_loader",
    "build_train_data",
    "build_train_loader",
    "decode_images",
    "plan_backend",
    "build_transforms",
    "check_datasets",
    "read_image",
    "to_tensor_image",
]
