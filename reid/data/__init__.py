"""Data: dataset parsers and registry, image reading, BoT transforms, the PK sampler and the loaders."""

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
    build_test_loader,
    build_train_loader,
)
from reid.data.samplers import PKSampler
from reid.data.transforms import build_transforms, to_tensor_image

__all__ = [
    "DATASET_REGISTRY",
    "ImageDataset",
    "ImageRecord",
    "PKSampler",
    "ReIDDataset",
    "TestData",
    "TrainData",
    "build_dataset",
    "build_image_loader",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "check_datasets",
    "read_image",
    "to_tensor_image",
]
