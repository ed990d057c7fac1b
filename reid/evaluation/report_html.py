"""Drawing report data into one self-contained HTML page: CSS inline, every picture (plots, thumbnails read
from the stored paths) a base64 data URI, no script, no network. One run, or several side by side."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid.evaluation.drawing import (
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    UNKNOWN_COLOR,
    camera_label,
    read_tile_image,
)
from reid.evaluation.report_data import (
    METRIC_COLUMNS,
    THUMBNAIL_SIZE,
    VARIANT_NAMES,
    DatasetReport,
    QueryList,
    ReportData,
    Tile,
)
from reid.evaluation.visualize import cmc_figure
from reid.utils.errors import ReIDError

logger = logging.getLogger("reid.evaluation")


def _css_color(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


_STYLE = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222;
       max-width: 1500px; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ccc; }} h3 {{ margin-top: 1.4em; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-variant-numeric: tabular-nums; }}
th {{ background: #f2f2f2; }} td.label, th.label {{ text-align: left; }}
td.na {{ color: #888; text-align: center; }}
.runs {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
.run {{ flex: 0 1 auto; }}
.plot {{ max-width: 100%; width: 640px; height: auto; }}
.note {{ color: #555; font-size: 0.9em; max-width: 900px; }}
.ranked {{ display: flex; flex-wrap: nowrap; gap: 6px; align-items: flex-start; margin: 6px 0 14px;
          overflow-x: auto; }}
.tile {{ margin: 0; text-align: center; font-size: 12px; line-height: 1.3; }}
.tile img {{ display: block; width: {THUMBNAIL_SIZE[1]}px; height: {THUMBNAIL_SIZE[0]}px; border: 4px solid;
            margin: 0 auto 2px; }}
.tile figcaption {{ white-space: nowrap; }}
.query img {{ border-color: {_css_color(QUERY_COLOR)}; }} .match img {{ border-color: {_css_color(MATCH_COLOR)}; }}
.mismatch img {{ border-color: {_css_color(MISMATCH_COLOR)}; }}
.ignored img {{ border-color: {_css_color(UNKNOWN_COLOR)}; opacity: 0.6; }}
.sep {{ align-self: center; color: #888; font-size: 20px; padding: 0 4px; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 18px; margin: 8px 0; font-size: 0.9em; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border: 3px solid; vertical-align: -3px;
          margin-right: 4px; }}
details summary {{ cursor: pointer; font-weight: 600; margin: 8px 0; }}
"""


def render_report_html(runs: Sequence[tuple[str, ReportData]], *, title: str = "", max_rank: int = 20) -> str:
    """The page for one run (``[(label, data)]``) or several side by side; plots and thumbnails inlined."""
    if not runs:
        raise ReIDError("No report data to render.")
    images = _ImageCache()
    single = len(runs) == 1
    title = title or runs[0][1].title
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    parts.append(_run_facts(runs))
    datasets = list(dict.fromkeys(d.name for _, data in runs for d in data.datasets))
    parts.append("<h2>Summary</h2>")
    parts.append(_summary_table(runs, datasets, single))
    parts.append('<p class="note">Metrics in percent. R<i>k</i>: fraction of queries whose first true match is '
                 "within the top <i>k</i>; mAP: mean average precision; mINP: mean inverse negative penalty. "
                 "Queries without a true match in the gallery are not counted.</p>")
    for name in datasets:
        entries = [(label, d) for label, data in runs for d in data.datasets if d.name == name]
        parts.append(f'<h2 id="{_e(_anchor(name))}">{_e(name)}</h2>')
        parts.append(_dataset_table(entries, single))
        parts.append(_img(images.figure(_cmc_plot(entries, name, single, max_rank)), f"CMC curves on {name}",
                          "plot"))
        parts.append("<h3>R1 / mAP by camera pair</h3>")
        parts.append('<p class="note">Row: the camera of the queries; column: the camera of the gallery images '
                     "they are ranked against (only those). The diagonal is empty: the protocol discards the "
                     "query identity's images from its own camera, so there is no true match to find there. "
                     "<i>all</i>: the whole gallery. Cameras as in the file names (c1 = camera id 0).</p>")
        parts.append('<div class="runs">' + "".join(
            f'<div class="run">{"" if single else f"<h4>{_e(label)}</h4>"}{_camera_table(d)}</div>'
            for label, d in entries) + "</div>")
        parts.append("<h3>Distances of true and false matches</h3>")
        parts.append('<div class="runs">' + "".join(
            f'<div class="run">{"" if single else f"<h4>{_e(label)}</h4>"}{_histogram_html(d, label, images)}</div>'
            for label, d in entries) + "</div>")
        parts.append("<h3>Worst and best queries</h3>")
        parts.append(_legend_html(entries[0][1].metric))
        for label, d in entries:
            prefix = "" if single else f"{label}: "
            for kind, lists in (("worst", d.worst), ("best", d.best)):
                if not lists:
                    continue
                heading = f"{prefix}{len(lists)} {kind} queries (by AP)"
                body = "".join(_ranked_html(q, images) for q in lists)
                parts.append(f"<details{' open' if single else ''}><summary>{_e(heading)}</summary>{body}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _run_facts(runs: Sequence[tuple[str, ReportData]]) -> str:
    rows = []
    for label, data in runs:
        facts = {"created": data.created, **data.info}
        text = "; ".join(f"{_e(k)}: {_e(v)}" for k, v in facts.items() if v)
        rows.append(f"<li><b>{_e(label)}</b>: {text}</li>" if len(runs) > 1 else f"<li>{text}</li>")
    return f'<ul class="note">{"".join(rows)}</ul>'


def _variant_rows(d: DatasetReport) -> list[tuple[str, dict]]:
    return [(VARIANT_NAMES.get(key, key), row) for key, row in d.results.items()]


def _columns(rows: Sequence[dict]) -> list[str]:
    return [c for c in METRIC_COLUMNS if all(c in row for row in rows)]


def _summary_table(runs: Sequence[tuple[str, ReportData]], datasets: Sequence[str], single: bool) -> str:
    lines, all_rows = [], []
    for label, data in runs:
        for d in data.datasets:
            for variant, row in _variant_rows(d):
                lines.append(([] if single else [label]) + [d.name + (f" ({variant})" if variant else "")])
                all_rows.append(row)
    columns = _columns(all_rows)
    head = ([] if single else ["run"]) + ["dataset"]
    out = ["<table><tr>" + "".join(f'<th class="label">{h}</th>' for h in head)
           + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for labels, row in zip(lines, all_rows):
        out.append("<tr>" + "".join(f'<td class="label">{_e(x)}</td>' for x in labels)
                   + "".join(f"<td>{_pct(row[c])}</td>" for c in columns) + "</tr>")
    return "".join(out) + "</table>"


def _dataset_table(entries: Sequence[tuple[str, DatasetReport]], single: bool) -> str:
    rows = [(label, variant, row, d) for label, d in entries for variant, row in _variant_rows(d)]
    columns = _columns([row for _, _, row, _ in rows])
    head = ([] if single else ["run"]) + ["ranking"]
    out = ["<table><tr>" + "".join(f'<th class="label">{h}</th>' for h in head)
           + "".join(f"<th>{c}</th>" for c in columns) + "<th>queries counted</th><th>gallery</th></tr>"]
    for label, variant, row, d in rows:
        cells = ([] if single else [label]) + [variant or d.metric + " distance"]
        out.append("<tr>" + "".join(f'<td class="label">{_e(x)}</td>' for x in cells)
                   + "".join(f"<td>{_pct(row[c])}</td>" for c in columns)
                   + f"<td>{row.get('num_valid_queries', '')} of {d.num_query}</td><td>{d.num_gallery}</td></tr>")
    return "".join(out) + "</table>"


def _cmc_plot(entries: Sequence[tuple[str, DatasetReport]], name: str, single: bool, max_rank: int) -> Figure:
    curves = {}
    for label, d in entries:
        for variant, row in _variant_rows(d):
            base = name if single else label
            curves[base + (f" {variant}" if variant else "")] = row["cmc"]
    return cmc_figure(curves, title=f"CMC on {name}", max_rank=max_rank, what=f"the report of {name}")


def _camera_table(d: DatasetReport) -> str:
    if not d.camera_cells:
        return '<p class="note">No camera pairs computed.</p>'
    by_pair = {(c.query_camera, c.gallery_camera): c for c in d.camera_cells}
    columns: list[int | None] = [*d.gallery_cameras, None]
    out = ['<table><tr><th class="label">query \\ gallery</th>'
           + "".join(f"<th>{'all' if g is None else camera_label(g)}</th>" for g in columns) + "</tr>"]
    for q in d.query_cameras:
        cells = []
        for g in columns:
            cell = by_pair.get((q, g))
            if cell is None:
                why = ("same camera: no true match under the protocol" if g == q
                       else "no query of this camera has a true match there")
                cells.append(f'<td class="na" title="{_e(why)}">&mdash;</td>')
            else:
                shade = _shade(cell.R1)
                cells.append(f'<td style="background:{shade}" title="{cell.queries} queries counted">'
                             f"{_pct(cell.R1)} / {_pct(cell.mAP)}</td>")
        out.append(f'<tr><th class="label">{camera_label(q)}</th>' + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _histogram_html(d: DatasetReport, label: str, images: _ImageCache) -> str:
    h = d.histogram
    if h is None:
        return '<p class="note">No histogram computed.</p>'
    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = np.asarray(h.edges)
    for counts, color, what in ((h.true_match, MATCH_COLOR, "true matches"),
                                (h.false_match, MISMATCH_COLOR, "false matches")):
        counts = np.asarray(counts, dtype=float)
        total = counts.sum()
        if total:
            ax.stairs(counts / total, edges, fill=True, alpha=0.45, color=_css_color(color),
                      label=f"{what} ({int(total):,})")
    ax.set_xlabel(f"{d.metric} distance")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(d.name)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    note = ('<p class="note">Each curve is normalised to its own total. Same identity and same camera as the '
            "query: left out, as in the evaluation.</p>")
    return _img(images.figure(fig), f"distance histogram of {label} on {d.name}", "plot") + note


def _legend_html(metric: str) -> str:
    items = [(QUERY_COLOR, "query (with its AP)"), (MATCH_COLOR, "same identity (true match)"),
             (MISMATCH_COLOR, "other identity"),
             (UNKNOWN_COLOR, "same identity and camera as the query: ignored by the protocol, not ranked")]
    swatches = "".join(f'<span><span class="swatch" style="border-color:{_css_color(c)}"></span>{_e(t)}</span>'
                       for c, t in items)
    text = (f"<span>#k: rank under the protocol; d: {_e(metric)} distance to the query; cN: camera N as in the "
            "file names</span>")
    return f'<div class="legend">{swatches}{text}</div>'


def _ranked_html(q: QueryList, images: _ImageCache) -> str:
    tiles = [_tile_html(q.query, images, [f"query  AP {_pct(q.ap)}%", _identity(q.query)])]
    for tile in q.results:
        tiles.append(_tile_html(tile, images, [_rank_line(tile), _identity(tile)]))
    if q.first_match is not None:
        tiles.append('<span class="sep" title="first true match">&hellip;</span>')
        tiles.append(_tile_html(q.first_match, images, [_rank_line(q.first_match), _identity(q.first_match)]))
    return f'<div class="ranked">{"".join(tiles)}</div>'


def _rank_line(tile: Tile) -> str:
    rank = "ignored" if tile.rank is None else f"#{tile.rank}"
    return f"{rank} d={tile.distance:.3f}"


def _identity(tile: Tile) -> str:
    return f"id {tile.pid} {camera_label(tile.camid)}"


def _tile_html(tile: Tile, images: _ImageCache, lines: Sequence[str]) -> str:
    caption = "<br>".join(_e(line) for line in lines)
    return (f'<figure class="tile {tile.status}" title="{_e(tile.path)}">'
            f'{_img(images.thumbnail(tile.path), Path(tile.path).name)}<figcaption>{caption}</figcaption></figure>')


class _ImageCache:
    """Data URIs of thumbnails (each file encoded once per page) and figures."""

    def __init__(self) -> None:
        self.thumbnails: dict[str, str] = {}

    def thumbnail(self, path: str) -> str:
        if path not in self.thumbnails:
            image = read_tile_image(path, THUMBNAIL_SIZE)  # a grey placeholder naming the file if unreadable
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise ReIDError(f"Could not encode a thumbnail of {path}.")
            self.thumbnails[path] = "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
        return self.thumbnails[path]

    @staticmethod
    def figure(fig: Figure) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} src="{uri}" alt="{_e(alt)}">'


def _shade(value: float) -> str:
    """A light background from red (0) through yellow to green (1)."""
    hue = 120 * min(max(value, 0.0), 1.0)
    return f"hsl({hue:.0f}, 70%, 85%)"


def _pct(value: float) -> str:
    return f"{100 * float(value):.1f}"


def _anchor(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
