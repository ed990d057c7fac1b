"""Exporting trained models (ONNX, TorchScript, release files) and using them on any images.

- :func:`export_model` (``tools/export.py``): write and verify an export.
- :class:`FeatureExtractor` (``reid.FeatureExtractor``): features of paths, OpenCV images or tensors.
- :func:`extract_folder` (``tools/extract.py``) and :func:`search_folder` / :func:`rank_images`
  (``tools/search.py``).
- :class:`ExportableReID`: the deployed feature (eval-mode model + TEST.FLIP + TEST.FEAT_NORM).
"""

from reid.export.exportable import ExportableReID, load_exportable
from reid.export.exporter import (
    FORMATS,
    ExportResult,
    ExportVerificationError,
    export_model,
)
from reid.export.extractor import FeatureExtractor, PathFeatures
from reid.export.folder_features import FolderFeatures, extract_folder
from reid.export.image_files import ImageScan, find_images, parse_identity, scan_images
from reid.export.release import RELEASE_FORMAT, RELEASE_VERSION
from reid.export.search import (
    SearchImages,
    SearchOutcome,
    SearchResult,
    rank_images,
    search_folder,
    search_images,
    top_k,
)

__all__ = [
    "FORMATS",
    "RELEASE_FORMAT",
    "ExportResult",
    "ExportVerificationError",
    "ExportableReID",
    "FeatureExtractor",
    "FolderFeatures",
    "ImageScan",
    "PathFeatures",
    "RELEASE_VERSION",
    "SearchImages",
    "SearchOutcome",
    "SearchResult",
    "export_model",
    "extract_folder",
    "find_images",
    "load_exportable",
    "parse_identity",
    "rank_images",
    "scan_images",
    "search_folder",
    "search_images",
    "top_k",
]
