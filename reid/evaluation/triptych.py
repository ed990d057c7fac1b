"""Attack triptychs: clean | adversarial | difference of an attacked query, upscaled and labelled."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from reid.data.io import save_picture
from reid.evaluation.drawing import BACKGROUND_COLOR, CAPTION_SCALE, FONT, MARGIN, TEXT_COLOR, fit_text, text_width
from reid.evaluation.protocol import RankResult, as_numpy
from reid.utils.errors import ReIDError

TRIPTYCH_HEIGHT = 256  # images are upscaled (nearest neighbour, a whole factor) to about this height
TRIPTYCH_COLORMAP = cv2.COLORMAP_VIRIDIS  # |difference| / eps: 0 dark blue ... eps and above yellow
_TRIPTYCH_MIN_WIDTH = 440  # room for the title
_TITLE_SCALE = 0.5
_TITLE_LINE = 22
_LABEL_LINE = 20
_COLORBAR = 10


class TriptychLayout:
    """Geometry of an attack triptych: a two-line title, then clean | adversarial | difference, each labelled
    above, and a colour bar (0 .. eps) under the difference."""

    def __init__(self, image_height: int, image_width: int, height: int = TRIPTYCH_HEIGHT) -> None:
        self.factor = max(1, round(height / image_height))
        self.panel_height, self.panel_width = image_height * self.factor, image_width * self.factor
        panels_width = 3 * self.panel_width + 2 * MARGIN
        self.width = max(panels_width, _TRIPTYCH_MIN_WIDTH) + 2 * MARGIN
        self.left = (self.width - panels_width) // 2
        self.panels_top = MARGIN + 2 * _TITLE_LINE + _LABEL_LINE
        self.colorbar_top = self.panels_top + self.panel_height + 6
        self.height = self.colorbar_top + _COLORBAR + 18 + MARGIN

    def panel_origin(self, index: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of panel ``index``: 0 clean, 1 adversarial, 2 difference."""
        return self.left + index * (self.panel_width + MARGIN), self.panels_top


def difference_map(clean, adversarial, eps: float, scale: float | None = None) -> np.ndarray:
    """Per pixel, the largest absolute change over the colour channels times ``scale`` (default ``1 / eps``),
    clipped to [0, 1]: with the default, 1 means the pixel moved by the whole budget."""
    clean_hwc, adversarial_hwc = _triptych_images(clean, adversarial)
    scale = _difference_scale(eps, scale)
    return np.clip(np.abs(adversarial_hwc - clean_hwc).max(axis=2) * scale, 0.0, 1.0)


def colorize_difference(difference: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a BGR image with :data:`TRIPTYCH_COLORMAP`."""
    levels = np.round(np.clip(difference, 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(levels, TRIPTYCH_COLORMAP)


def format_eps(eps: float) -> str:
    """``8/255`` for a whole number of 8-bit levels, else the value (``0.01``)."""
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:.4g}"


def ap_of(result: RankResult, query: int) -> float | None:
    """The AP of query ``query`` (its index in the query set) in ``result``; ``None`` when it has no true
    match (the evaluator leaves it out). For the triptych's ``ap_before`` / ``ap_after``."""
    found = np.flatnonzero(np.asarray(result.query_indices) == query)
    return float(result.AP[found[0]]) if len(found) else None


def draw_attack_triptych(clean, adversarial, eps: float, path: str | Path, *, attack: str, objective: str,
                         ap_before: float | None, ap_after: float | None, scale: float | None = None,
                         height: int = TRIPTYCH_HEIGHT) -> Path:
    """Write clean | adversarial | |difference| of one attacked query, upscaled and labelled, to ``path``.

    ``clean``, ``adversarial``: RGB images in [0, 1], (3, H, W) tensors or arrays, as the attacks produce.
    ``eps``: the attack budget in the same [0, 1] units. The difference panel shows, per pixel, the largest
    change over the channels times ``scale`` (default ``1 / eps``, so the budget is the top of the colour
    map; a sign attack that moves nearly every pixel by eps is then uniformly bright, not a white panel)
    through :data:`TRIPTYCH_COLORMAP`, with a colour bar from 0 to eps underneath. The title names the attack,
    its objective and eps, and the query's AP before and after (fractions, shown in percent; ``None``:
    n/a). Images are upscaled by a whole factor with nearest-neighbour sampling to about ``height`` pixels so
    the perturbation's pixels stay visible. Use a .png path: JPEG would blur the difference.
    """
    clean_hwc, adversarial_hwc = _triptych_images(clean, adversarial)
    scale = _difference_scale(eps, scale)
    layout = TriptychLayout(clean_hwc.shape[0], clean_hwc.shape[1], height)
    canvas = np.full((layout.height, layout.width, 3), BACKGROUND_COLOR, np.uint8)
    difference = colorize_difference(difference_map(clean, adversarial, eps, scale))
    panels = [_to_bgr8(clean_hwc), _to_bgr8(adversarial_hwc), difference]
    labels = ["clean", "adversarial", f"|difference| x {scale:.3g}"]
    size = (layout.panel_width, layout.panel_height)
    for index, (panel, label) in enumerate(zip(panels, labels)):
        x, y = layout.panel_origin(index)
        canvas[y:y + layout.panel_height, x:x + layout.panel_width] = cv2.resize(
            panel, size, interpolation=cv2.INTER_NEAREST)
        text, text_scale = fit_text(label, layout.panel_width)
        cv2.putText(canvas, text, (x, y - 6), FONT, text_scale, TEXT_COLOR, 1, cv2.LINE_AA)
    _draw_colorbar(canvas, layout, format_eps(1 / scale if scale > 0 else eps))

    title = f"{attack} ({objective}), eps {format_eps(eps)}"
    ap_line = f"query AP {_percent(ap_before)} clean -> {_percent(ap_after)} adversarial"
    for line, text in enumerate((title, ap_line)):
        text, text_scale = fit_text(text, layout.width - 2 * MARGIN, _TITLE_SCALE)
        cv2.putText(canvas, text, (MARGIN, MARGIN + 15 + line * _TITLE_LINE), FONT, text_scale, TEXT_COLOR, 1,
                    cv2.LINE_AA)
    return save_picture(path, canvas, "attack triptych")


def _draw_colorbar(canvas: np.ndarray, layout: TriptychLayout, top_label: str) -> None:
    x, _ = layout.panel_origin(2)
    ramp = np.linspace(0, 1, layout.panel_width)[None, :].repeat(_COLORBAR, axis=0)
    canvas[layout.colorbar_top:layout.colorbar_top + _COLORBAR, x:x + layout.panel_width] = colorize_difference(ramp)
    baseline = layout.colorbar_top + _COLORBAR + 14
    cv2.putText(canvas, "0", (x, baseline), FONT, CAPTION_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)
    right = x + layout.panel_width - text_width(top_label)
    cv2.putText(canvas, top_label, (right, baseline), FONT, CAPTION_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)


def _triptych_images(clean, adversarial) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float32 (H, W, 3) RGB arrays, checked to be the same size."""
    images = []
    for name, image in (("clean", clean), ("adversarial", adversarial)):
        array = as_numpy(image).astype(np.float32)
        if array.ndim != 3 or array.shape[0] != 3:
            raise ReIDError(f"The {name} image of a triptych must be a (3, H, W) RGB image in [0, 1], got shape "
                            f"{tuple(array.shape)}.")
        images.append(array.transpose(1, 2, 0))
    if images[0].shape != images[1].shape:
        raise ReIDError(f"The clean and adversarial images differ in size: {images[0].shape[:2]} vs "
                        f"{images[1].shape[:2]}.")
    return images[0], images[1]


def _difference_scale(eps: float, scale: float | None) -> float:
    if scale is None:
        if not eps > 0:
            raise ReIDError(f"A triptych needs eps > 0 to scale its difference panel, got {eps!r}; or pass scale.")
        return 1.0 / eps
    if not scale > 0:
        raise ReIDError(f"The difference scale must be positive, got {scale!r}.")
    return float(scale)


def _to_bgr8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)[:, :, ::-1])


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"
