"""Dataset parsers, registered by name in :data:`DATASET_REGISTRY`.

Every module of this package is imported here, so a new dataset only needs its own file.
"""

import importlib
import pkgutil

from reid.data.datasets.base import (
    DATASET_REGISTRY,
    DatasetSource,
    ImageRecord,
    MarketStyleSource,
    ReIDDataset,
    SubsetFingerprint,
    build_dataset,
    check_datasets,
    check_fingerprints,
    dataset_key,
    dataset_source,
    fingerprint_dataset,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration happens at import
del _module

__all__ = [
    "DATASET_REGISTRY",
    "DatasetSource",
    "ImageRecord",
    "MarketStyleSource",
    "ReIDDataset",
    "SubsetFingerprint",
    "build_dataset",
    "check_datasets",
    "check_fingerprints",
    "dataset_key",
    "dataset_source",
    "fingerprint_dataset",
]
