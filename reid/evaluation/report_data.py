"""The report's data: what one run's evaluation shows, JSON-serialisable (no features, no pixels).

:class:`ReportData` holds the :class:`DatasetReport` of each dataset; ``report_data.json`` stores it next to
``report.html`` so pages can be drawn again, or runs compared, without the features
(:mod:`reid.evaluation.report` builds and writes it, :mod:`reid.evaluation.report_html` draws it).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reid.utils.errors import ReIDError
from reid.utils.fsio import atomic_write_text

REPORT_FORMAT = "reid-report/1"
REPORT_HTML = "report.html"
REPORT_DATA = "report_data.json"
#: Thumbnail size in the ranked lists, (height, width) pixels.
THUMBNAIL_SIZE = (128, 64)
#: Metric columns of the tables, in order (those present in every row are shown).
METRIC_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP")
#: Result keys and how the page names them.
VARIANT_NAMES = {"plain": "", "rerank": "re-ranked"}
#: Kinds of tile in a ranked list.
STATUSES = ("query", "match", "mismatch", "ignored")


@dataclass
class Tile:
    """One image of a ranked list."""

    path: str
    pid: int
    camid: int  # 0-based, as in the toolkit; shown 1-based
    status: str  # one of STATUSES
    distance: float | None = None  # to the query (None for the query itself)
    rank: int | None = None  # 1-based rank under the protocol (None: the query, or ignored by the protocol)


@dataclass
class QueryList:
    """A query, its AP, and the head of its ranking (ignored images shown where they fall, in grey)."""

    query: Tile
    ap: float
    results: list[Tile]
    first_match: Tile | None = None  # the first true match, when it ranks below the shown results


@dataclass
class CameraCell:
    query_camera: int
    gallery_camera: int | None  # None: the whole gallery
    R1: float
    mAP: float
    queries: int  # queries with a true match in this cell


@dataclass
class DistanceHistogram:
    edges: list[float]
    true_match: list[int]
    false_match: list[int]
    queries: int  # queries whose distances are counted (all of them)


@dataclass
class DatasetReport:
    """Everything the page shows about one dataset (JSON-serialisable; no features)."""

    name: str
    num_query: int
    num_gallery: int
    metric: str
    results: dict[str, dict[str, Any]]  # "plain" / "rerank" -> R1.., mAP, mINP, cmc, num_valid_queries
    query_cameras: list[int] = field(default_factory=list)
    gallery_cameras: list[int] = field(default_factory=list)
    camera_cells: list[CameraCell] = field(default_factory=list)
    histogram: DistanceHistogram | None = None
    worst: list[QueryList] = field(default_factory=list)
    best: list[QueryList] = field(default_factory=list)


@dataclass
class ReportData:
    """One run's report: its datasets and a few facts to show (weights, config, ...)."""

    title: str
    datasets: list[DatasetReport]
    info: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    format: str = REPORT_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the data as JSON (a few tens of kB: no features, no pixels)."""
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "report data") -> ReportData:
        """Rebuild from :meth:`to_dict`'s output; a ReIDError naming ``source`` when it does not fit."""
        try:
            if data.get("format") != REPORT_FORMAT:
                raise ReIDError(f"{source} is not a report data file of this version (format "
                                f"{data.get('format')!r}, expected {REPORT_FORMAT!r}); run the evaluation again.")
            datasets = [_dataset_from_dict(d) for d in data["datasets"]]
            return cls(title=str(data["title"]), datasets=datasets, info=dict(data.get("info", {})),
                       created=str(data.get("created", "")))
        except ReIDError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReIDError(f"{source} is not a readable report data file ({type(exc).__name__}: {exc}); "
                            "run the evaluation again to rewrite it.") from exc

    @classmethod
    def load(cls, path: str | Path) -> ReportData:
        path = Path(path)
        if not path.is_file():
            raise ReIDError(f"{path} does not exist: tools/test.py (or training's final evaluation) writes it "
                            f"next to {REPORT_HTML}; evaluate the run first.")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReIDError(f"{path} is not valid JSON ({exc}); run the evaluation again to rewrite it.") from exc
        if not isinstance(data, dict):
            raise ReIDError(f"{path} does not hold a report (a JSON object was expected).")
        return cls.from_dict(data, source=str(path))


def _tile(d: Mapping) -> Tile:
    tile = Tile(**d)
    if tile.status not in STATUSES:
        raise ValueError(f"unknown tile status {tile.status!r}")
    return tile


def _dataset_from_dict(d: Mapping) -> DatasetReport:
    def query_list(q: Mapping) -> QueryList:
        return QueryList(query=_tile(q["query"]), ap=float(q["ap"]), results=[_tile(t) for t in q["results"]],
                         first_match=_tile(q["first_match"]) if q.get("first_match") else None)

    histogram = d.get("histogram")
    return DatasetReport(
        name=str(d["name"]), num_query=int(d["num_query"]), num_gallery=int(d["num_gallery"]), metric=str(d["metric"]),
        results={str(k): dict(v) for k, v in d["results"].items()},
        query_cameras=[int(c) for c in d.get("query_cameras", [])],
        gallery_cameras=[int(c) for c in d.get("gallery_cameras", [])],
        camera_cells=[CameraCell(**c) for c in d.get("camera_cells", [])],
        histogram=DistanceHistogram(**histogram) if histogram else None,
        worst=[query_list(q) for q in d.get("worst", [])], best=[query_list(q) for q in d.get("best", [])])
