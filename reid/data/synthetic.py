"""Synthetic person re-identification data in the Market-1501 and DukeMTMC-reID layouts.

No real ReID dataset can be downloaded in this project, so this module renders simple pedestrian-like
crops with OpenCV and writes them with exactly the folder structure and file names of the real
datasets; the real dataset parsers read them unchanged. The structure matters, not the pixels:

* an **identity** is a fixed set of appearance attributes (:class:`PersonAttributes`) kept across
  cameras. Attributes come from small palettes, so several identities share each cue and a model
  must combine cues to tell people apart;
* a **camera** (:class:`Camera`) changes how an identity looks: illumination, colour cast, blur,
  noise, background, its usual viewpoint and how often people are occluded. Every image adds its
  own jitter on top (pose, scale, position, occluders, lighting);
* a **domain** (:class:`DomainStyle`) is the distribution cameras and clothing are drawn from.
  ``market`` and ``duke`` differ systematically (backgrounds, colour casts, occlusion, crop sizes,
  blur, 6 vs 8 cameras) while identities come from the same family of distributions, so features
  transfer only partly, as from Market-1501 to DukeMTMC-reID.

Every random draw is seeded by (seed, style, what, which), so the files are byte-identical for a
seed whatever the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from reid.utils.errors import ReIDError

__all__ = [
    "STYLES", "SUBSETS", "MANIFEST_NAME", "DOMAIN_STYLES", "DomainStyle", "PersonAttributes", "Camera",
    "Pose", "get_style", "sample_identity", "make_cameras", "sample_pose", "render_person",
    "render_distractor", "render_junk", "read_manifest", "generate_synthetic",
]

logger = logging.getLogger(__name__)

BGR = tuple[int, int, int]
STYLES = ("market", "duke")
SUBSETS = ("bounding_box_train", "query", "bounding_box_test")
MANIFEST_NAME = "synthetic.json"
GENERATOR_VERSION = 1  # bump whenever the output changes, so existing folders are regenerated
DISTRACTOR_PID = 0     # Market-1501 names images of nobody in particular 0000 ...
JUNK_PID = -1          # ... and bad detections -1; evaluation ignores the latter.
MAX_PID = 9999         # pids are written with four digits


# --------------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainStyle:
    """The knobs of one visual domain. Pairs are ``(low, high)`` ranges sampled uniformly."""

    name: str
    folder: str                           # dataset folder created under the root
    num_cameras: int
    cameras_per_identity: tuple[int, int]
    crop_height: tuple[int, int]          # pixels; equal bounds give a fixed size
    crop_aspect: tuple[float, float]      # width / height
    person_scale: tuple[float, float]     # person height / crop height
    # Backgrounds: OpenCV HSV ranges (hue 0-180, saturation and value 0-255) for each camera's
    # wall and ground colours, the contrast of their texture and how many objects clutter them.
    background_hue: tuple[float, float]
    background_saturation: tuple[float, float]
    background_value: tuple[float, float]
    texture_strength: float
    clutter_items: tuple[int, int]
    # Camera response, drawn once per camera; each image jitters around it.
    colour_cast: float                    # largest relative white-balance error of a channel
    gain: tuple[float, float]
    gamma: tuple[float, float]
    blur_sigma: tuple[float, float]
    noise_sigma: tuple[float, float]
    occlusion_rate: float                 # mean share of images with an occluder in front
    # Clothing: palettes are shared by both domains, only these weights move (summer vs winter).
    lower_type_weights: tuple[float, float, float]  # trousers, shorts, skirt
    dark_clothing_rate: float
    jpeg_quality: int
    default_distractors: int              # gallery images of nobody (pid 0000)
    default_junk: int                     # gallery bad crops (pid -1)

    @property
    def has_gallery_extras(self) -> bool:
        """Whether the real dataset's gallery holds distractor (0000) and junk (-1) images."""
        return self.default_distractors > 0 or self.default_junk > 0

    def file_name(self, pid: int, camera: int, frame: int, sequence: int = 1, box: int = 1) -> str:
        """The image file name in the real dataset's convention."""
        if self.name == "market":  # 0002_c1s1_000451_03.jpg, junk as -1_c1s1_000000_00.jpg
            pid_text = str(pid) if pid == JUNK_PID else f"{pid:04d}"
            return f"{pid_text}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg"
        return f"{pid:04d}_c{camera}_f{frame:07d}.jpg"  # 0001_c2_f0046182.jpg


# Market-1501: a bright summer campus, six cameras, fixed 128x64 detector crops, mild colour casts.
MARKET = DomainStyle(
    name="market", folder="synthetic_market", num_cameras=6, cameras_per_identity=(2, 4),
    crop_height=(128, 128), crop_aspect=(0.5, 0.5), person_scale=(0.80, 0.95),
    background_hue=(20, 80), background_saturation=(20, 90), background_value=(125, 215),
    texture_strength=10.0, clutter_items=(0, 2),
    colour_cast=0.08, gain=(0.9, 1.15), gamma=(0.85, 1.1), blur_sigma=(0.0, 0.6), noise_sigma=(2.0, 5.0),
    occlusion_rate=0.12, lower_type_weights=(0.5, 0.3, 0.2), dark_clothing_rate=0.35, jpeg_quality=92,
    default_distractors=150, default_junk=60,
)

# DukeMTMC-reID: darker winter scenes with saturated, cluttered backgrounds, stronger casts, more
# occlusion and blur, eight cameras and hand-drawn boxes of varying size.
DUKE = DomainStyle(
    name="duke", folder="synthetic_duke", num_cameras=8, cameras_per_identity=(2, 5),
    crop_height=(120, 260), crop_aspect=(0.33, 0.45), person_scale=(0.78, 0.98),
    background_hue=(95, 170), background_saturation=(70, 170), background_value=(50, 135),
    texture_strength=20.0, clutter_items=(2, 6),
    colour_cast=0.18, gain=(0.75, 1.05), gamma=(0.95, 1.35), blur_sigma=(0.5, 1.4), noise_sigma=(3.0, 8.0),
    occlusion_rate=0.4, lower_type_weights=(0.8, 0.1, 0.1), dark_clothing_rate=0.6, jpeg_quality=85,
    default_distractors=0, default_junk=0,
)

DOMAIN_STYLES: dict[str, DomainStyle] = {"market": MARKET, "duke": DUKE}


def get_style(name: str) -> DomainStyle:
    """The :class:`DomainStyle` called ``name`` (``market`` or ``duke``)."""
    if name not in DOMAIN_STYLES:
        raise ReIDError(f"Unknown synthetic dataset style {name!r}; choose one of {', '.join(STYLES)}.")
    return DOMAIN_STYLES[name]


def _rng(*key: int) -> np.random.Generator:
    """An independent generator for one (seed, style, what, which...) key."""
    return np.random.default_rng(np.random.SeedSequence(list(key)))


# Tags that keep the random streams of different kinds of draw apart.
_PLAN, _IDENTITY, _CAMERA, _IMAGE, _DISTRACTOR, _JUNK = range(6)


# --------------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------------

CLOTHING_PALETTE: dict[str, BGR] = {
    "black": (30, 30, 30), "charcoal": (70, 70, 70), "grey": (140, 140, 140), "white": (235, 235, 235),
    "navy": (90, 40, 20), "blue": (200, 110, 40), "sky": (230, 190, 140), "red": (40, 40, 200),
    "maroon": (40, 30, 120), "green": (60, 140, 50), "olive": (50, 110, 110), "yellow": (40, 210, 230),
    "orange": (30, 130, 240), "pink": (180, 140, 240), "purple": (140, 50, 110), "beige": (160, 200, 220),
    "brown": (40, 70, 120),
}
DARK_COLOURS = ("black", "charcoal", "navy", "maroon", "olive", "brown", "purple")
LIGHT_COLOURS = tuple(name for name in CLOTHING_PALETTE if name not in DARK_COLOURS)
SKIN_TONES: tuple[BGR, ...] = (
    (185, 205, 240), (150, 180, 225), (110, 150, 200), (80, 115, 165), (50, 75, 115))
HAIR_COLOURS: tuple[BGR, ...] = ((20, 20, 25), (30, 45, 70), (50, 80, 120), (110, 170, 210), (170, 170, 170))
SHOE_COLOURS: tuple[BGR, ...] = ((25, 25, 25), (235, 235, 235), (60, 80, 110), (120, 120, 120), (150, 60, 30))
UPPER_PATTERNS = ("solid", "stripes", "checks", "logo")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "handbag")


@dataclass(frozen=True)
class PersonAttributes:
    """What stays the same about a person in every camera."""

    upper_colour: BGR
    upper_pattern: str       # one of UPPER_PATTERNS
    pattern_colour: BGR
    long_sleeves: bool
    lower_colour: BGR
    lower_type: str          # one of LOWER_TYPES
    stature: float           # relative height, 1 = tallest
    build: float             # shoulder half-width / body height
    head_size: float         # head radius / body height
    leg_length: float        # hip height / body height
    skin: BGR
    hair_colour: BGR
    long_hair: bool
    bag: str                 # one of BAGS
    bag_colour: BGR
    shoe_colour: BGR


def _jitter(colour: Sequence[float], rng: np.random.Generator, amount: float) -> BGR:
    """``colour`` moved by up to ``amount`` per channel, so palette-mates differ slightly."""
    moved = np.clip(np.asarray(colour, float) + rng.uniform(-amount, amount, 3), 0, 255)
    return tuple(int(c) for c in moved)  # type: ignore[return-value]


def _clothing_colour(rng: np.random.Generator, style: DomainStyle,
                     avoid: str | None = None) -> tuple[str, BGR]:
    """A palette colour (name, BGR); the domain decides how often it is a dark one."""
    shades = DARK_COLOURS if rng.random() < style.dark_clothing_rate else LIGHT_COLOURS
    name = str(rng.choice([s for s in shades if s != avoid]))
    return name, _jitter(CLOTHING_PALETTE[name], rng, 12)


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    probabilities = None if weights is None else np.asarray(weights) / np.sum(weights)
    return options[int(rng.choice(len(options), p=probabilities))]


def sample_identity(rng: np.random.Generator, style: DomainStyle) -> PersonAttributes:
    """Draw one person. Palettes are small on purpose: many people share each single attribute."""
    upper_name, upper_colour = _clothing_colour(rng, style)
    _, pattern_colour = _clothing_colour(rng, style, avoid=upper_name)
    _, lower_colour = _clothing_colour(rng, style)
    _, bag_colour = _clothing_colour(rng, style)
    return PersonAttributes(
        upper_colour=upper_colour,
        upper_pattern=_pick(rng, UPPER_PATTERNS, (0.4, 0.2, 0.2, 0.2)),
        pattern_colour=pattern_colour,
        long_sleeves=bool(rng.random() < 0.5),
        lower_colour=lower_colour,
        lower_type=_pick(rng, LOWER_TYPES, style.lower_type_weights),
        stature=float(rng.uniform(0.88, 1.0)),
        build=float(rng.uniform(0.10, 0.14)),
        head_size=float(rng.uniform(0.055, 0.07)),
        leg_length=float(rng.uniform(0.44, 0.52)),
        skin=_jitter(_pick(rng, SKIN_TONES), rng, 8),
        hair_colour=_jitter(_pick(rng, HAIR_COLOURS), rng, 8),
        long_hair=bool(rng.random() < 0.35),
        bag=_pick(rng, BAGS, (0.5, 0.3, 0.2)),
        bag_colour=bag_colour,
        shoe_colour=_jitter(_pick(rng, SHOE_COLOURS), rng, 10),
    )


# --------------------------------------------------------------------------------------------------
# Cameras and poses
# --------------------------------------------------------------------------------------------------

VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class Camera:
    """One camera of a domain: the scene it looks at and how it records it."""

    index: int                            # 1-based, as in the file names
    domain: DomainStyle
    wall_colour: BGR
    ground_colour: BGR
    horizon: float                        # share of the crop height above the ground
    white_balance: tuple[float, float, float]
    gain: float
    gamma: float
    blur_sigma: float
    noise_sigma: float
    occlusion_rate: float
    view_weights: tuple[float, float, float]  # how often people face front / back / sideways


def _hsv_colour(hue: float, saturation: float, value: float) -> BGR:
    pixel = np.array([[[hue % 180, np.clip(saturation, 0, 255), np.clip(value, 0, 255)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0])  # type: ignore[return-value]


def make_cameras(style: DomainStyle, seed: int) -> list[Camera]:
    """The cameras of ``style`` for ``seed``; camera ``i`` is element ``i - 1``."""
    cameras = []
    for index in range(1, style.num_cameras + 1):
        rng = _rng(seed, STYLES.index(style.name), _CAMERA, index)
        hue = rng.uniform(*style.background_hue)
        saturation = rng.uniform(*style.background_saturation)
        value = rng.uniform(*style.background_value)
        ground_value = value * rng.uniform(0.7, 1.0)
        cameras.append(Camera(
            index=index,
            domain=style,
            wall_colour=_hsv_colour(hue, saturation, value),
            ground_colour=_hsv_colour(hue + rng.normal(0, 10), saturation * 0.6, ground_value),
            horizon=float(rng.uniform(0.35, 0.65)),
            white_balance=tuple(float(g) for g in 1 + rng.uniform(-style.colour_cast, style.colour_cast, 3)),
            gain=float(rng.uniform(*style.gain)),
            gamma=float(rng.uniform(*style.gamma)),
            blur_sigma=float(rng.uniform(*style.blur_sigma)),
            noise_sigma=float(rng.uniform(*style.noise_sigma)),
            occlusion_rate=float(np.clip(style.occlusion_rate * rng.uniform(0.5, 1.5), 0, 1)),
            view_weights=tuple(float(w) for w in rng.dirichlet((2.0, 2.0, 1.0))),
        ))
    return cameras


@dataclass(frozen=True)
class Pose:
    """How a person stands in one image."""

    view: str                        # one of VIEWS
    leg_spread: float                # horizontal distance between the feet / body height
    arm_angles: tuple[float, float]  # degrees from hanging straight down, left and right arm
    lean: float                      # degrees, positive leans to the right


def sample_pose(camera: Camera, rng: np.random.Generator) -> Pose:
    """A walking pose; the view follows the camera's habits (a corridor camera sees backs)."""
    return Pose(
        view=_pick(rng, VIEWS, camera.view_weights),
        leg_spread=float(rng.uniform(0.0, 0.14)),
        arm_angles=(float(rng.uniform(-10, 30)), float(rng.uniform(-10, 30))),
        lean=float(rng.normal(0, 3)),
    )


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


class _Layer:
    """A person drawn on a transparent layer, so it can be tilted and laid over the background."""

    def __init__(self, height: int, width: int) -> None:
        self.image = np.zeros((height, width, 3), np.uint8)
        self.alpha = np.zeros((height, width), np.uint8)

    def polygon(self, points: Sequence[tuple[float, float]], colour: BGR) -> None:
        outline = [np.round(np.asarray(points)).astype(np.int32)]
        cv2.fillPoly(self.image, outline, colour)
        cv2.fillPoly(self.alpha, outline, 255)

    def limb(self, start: tuple[float, float], end: tuple[float, float], thickness: float,
             colour: BGR) -> None:
        width = max(1, int(round(thickness)))
        cv2.line(self.image, _pt(*start), _pt(*end), colour, width)
        cv2.line(self.alpha, _pt(*start), _pt(*end), 255, width)

    def ellipse(self, centre: tuple[float, float], axes: tuple[float, float], colour: BGR,
                start: float = 0, end: float = 360) -> None:
        size = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
        cv2.ellipse(self.image, _pt(*centre), size, 0, start, end, colour, -1)
        cv2.ellipse(self.alpha, _pt(*centre), size, 0, start, end, 255, -1)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, colour: BGR) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)

    def pattern(self, outline: Sequence[tuple[float, float]], kind: str, spacing: float, colour: BGR) -> None:
        """Stripes or checks clipped to ``outline`` (the torso)."""
        region = np.zeros_like(self.alpha)
        cv2.fillPoly(region, [np.round(np.asarray(outline)).astype(np.int32)], 255)
        marks = np.zeros_like(self.alpha)
        step, thickness = max(3, int(round(spacing))), max(1, int(round(spacing / 3)))
        height, width = marks.shape
        for y in range(0, height, step):
            cv2.line(marks, (0, y), (width, y), 255, thickness)
        if kind == "checks":
            for x in range(0, width, step):
                cv2.line(marks, (x, 0), (x, height), 255, thickness)
        self.image[(region > 0) & (marks > 0)] = colour

    def tilt(self, degrees: float, pivot: tuple[float, float]) -> None:
        if abs(degrees) < 0.5:
            return
        matrix = cv2.getRotationMatrix2D(pivot, degrees, 1.0)
        size = self.alpha.shape[::-1]
        self.image = cv2.warpAffine(self.image, matrix, size, flags=cv2.INTER_LINEAR)
        self.alpha = cv2.warpAffine(self.alpha, matrix, size, flags=cv2.INTER_LINEAR)

    def over(self, background: np.ndarray) -> np.ndarray:
        # The layer is premultiplied (drawn on black), which keeps tilted edges free of dark halos.
        alpha = self.alpha[..., None].astype(np.float32) / 255
        return (self.image + background * (1 - alpha)).astype(np.uint8)


@dataclass(frozen=True)
class _Body:
    """Pixel geometry of one person in one image."""

    cx: float
    top: float
    feet: float
    size: float            # body height in pixels
    head_radius: float
    shoulder_y: float
    hip_y: float
    shoulder_half: float   # half the shoulder width
    hip_half: float
    limb: float            # leg thickness

    @property
    def knee_y(self) -> float:
        return (self.hip_y + self.feet) / 2

    @property
    def head_centre(self) -> tuple[float, float]:
        return self.cx, self.top + self.head_radius

    def torso(self) -> list[tuple[float, float]]:
        waist = self.hip_y + 0.03 * self.size  # the top hangs a little over the trousers
        left, right = self.cx - self.shoulder_half, self.cx + self.shoulder_half
        return [(left, self.shoulder_y), (right, self.shoulder_y),
                (self.cx + self.hip_half, waist), (self.cx - self.hip_half, waist)]


def _layout_body(attrs: PersonAttributes, pose: Pose, style: DomainStyle, height: int, width: int,
                 rng: np.random.Generator) -> _Body:
    size = height * rng.uniform(*style.person_scale) * attrs.stature
    feet = height * (1 - rng.uniform(0.0, 0.06))
    narrow = 0.6 if pose.view == "side" else 1.0
    shoulder_half = size * attrs.build * narrow
    head_radius = size * attrs.head_size
    top = feet - size
    return _Body(
        cx=width * (0.5 + rng.normal(0, 0.05)), top=top, feet=feet, size=size, head_radius=head_radius,
        shoulder_y=top + 2 * head_radius + 0.03 * size, hip_y=feet - size * attrs.leg_length,
        shoulder_half=shoulder_half, hip_half=0.8 * shoulder_half, limb=0.55 * size * attrs.build,
    )


def _draw_legs(layer: _Layer, attrs: PersonAttributes, pose: Pose, body: _Body) -> None:
    shoe_height = 0.03 * body.size
    for side in (-1, 1):
        hip = (body.cx + side * body.hip_half * 0.5, body.hip_y)
        foot = (hip[0] + side * pose.leg_spread * body.size / 2, body.feet - shoe_height)
        knee = ((hip[0] + foot[0]) / 2, body.knee_y)
        if attrs.lower_type == "trousers":
            layer.limb(hip, foot, body.limb, attrs.lower_colour)
        else:
            layer.limb(hip, foot, 0.8 * body.limb, attrs.skin)
            if attrs.lower_type == "shorts":
                layer.limb(hip, (knee[0], knee[1] - 0.04 * body.size), 1.1 * body.limb, attrs.lower_colour)
        layer.ellipse((foot[0] + side * 0.2 * body.limb, body.feet - shoe_height / 2),
                      (0.7 * body.limb, shoe_height), attrs.shoe_colour)
    if attrs.lower_type == "skirt":
        flare = body.hip_half + 0.3 * pose.leg_spread * body.size + 0.03 * body.size
        layer.polygon([(body.cx - body.hip_half, body.hip_y), (body.cx + body.hip_half, body.hip_y),
                       (body.cx + flare, body.knee_y), (body.cx - flare, body.knee_y)], attrs.lower_colour)


def _draw_torso(layer: _Layer, attrs: PersonAttributes, pose: Pose, body: _Body) -> None:
    outline = body.torso()
    layer.polygon(outline, attrs.upper_colour)
    if attrs.upper_pattern in ("stripes", "checks"):
        layer.pattern(outline, attrs.upper_pattern, 0.05 * body.size, attrs.pattern_colour)
    elif attrs.upper_pattern == "logo" and pose.view == "front":  # a chest print is only seen from the front
        chest = (body.cx, body.shoulder_y + 0.3 * (body.hip_y - body.shoulder_y))
        layer.ellipse(chest, (0.45 * body.shoulder_half, 0.45 * body.shoulder_half), attrs.pattern_colour)


def _draw_arms(layer: _Layer, attrs: PersonAttributes, pose: Pose, body: _Body) -> list[tuple[float, float]]:
    """Draws both arms and returns the hand positions."""
    length = 1.1 * (body.hip_y - body.shoulder_y)
    thickness = 0.7 * body.limb
    shoulder_offset = 0.0 if pose.view == "side" else 0.85 * body.shoulder_half
    hands = []
    for side, angle in zip((-1, 1), pose.arm_angles, strict=True):
        shoulder = (body.cx + side * shoulder_offset, body.shoulder_y + thickness / 2)
        radians = np.deg2rad(angle)
        hand = (shoulder[0] + side * length * np.sin(radians), shoulder[1] + length * np.cos(radians))
        elbow = ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2)
        layer.limb(shoulder, hand, thickness, attrs.upper_colour if attrs.long_sleeves else attrs.skin)
        if not attrs.long_sleeves:
            layer.limb(shoulder, elbow, 1.1 * thickness, attrs.upper_colour)
        layer.ellipse(hand, (0.6 * thickness, 0.6 * thickness), attrs.skin)
        hands.append(hand)
    return hands


def _draw_long_hair(layer: _Layer, attrs: PersonAttributes, body: _Body) -> None:
    x, y = body.head_centre
    layer.rectangle(x - 1.05 * body.head_radius, y, x + 1.05 * body.head_radius,
                    body.shoulder_y + 0.1 * body.size, attrs.hair_colour)


def _draw_head(layer: _Layer, attrs: PersonAttributes, pose: Pose, body: _Body) -> None:
    centre, radius = body.head_centre, body.head_radius
    layer.limb((body.cx, centre[1]), (body.cx, body.shoulder_y + 1), 0.8 * radius, attrs.skin)  # neck
    layer.ellipse(centre, (radius, 1.1 * radius), attrs.skin)
    hair_axes = (1.05 * radius, 1.15 * radius)
    if pose.view == "back":
        layer.ellipse(centre, hair_axes, attrs.hair_colour)
    else:  # a cap of hair on top; seen from the side it also covers the back of the head
        start = 150 if pose.view == "side" else 180
        layer.ellipse(centre, hair_axes, attrs.hair_colour, start=start, end=360)


def _draw_backpack(layer: _Layer, attrs: PersonAttributes, pose: Pose, body: _Body) -> None:
    top, bottom = body.shoulder_y + 0.02 * body.size, body.hip_y - 0.02 * body.size
    if pose.view == "back":
        half = 0.7 * body.shoulder_half
        layer.rectangle(body.cx - half, top, body.cx + half, bottom, attrs.bag_colour)
    elif pose.view == "side":  # sticks out behind the body
        back = body.cx - body.shoulder_half
        layer.rectangle(back - 0.07 * body.size, top, back + 0.01 * body.size, bottom, attrs.bag_colour)
    else:  # only the straps show from the front
        for side in (-1, 1):
            x = body.cx + side * 0.55 * body.shoulder_half
            layer.limb((x, body.shoulder_y), (x, (body.shoulder_y + body.hip_y) / 2), 0.25 * body.limb,
                       attrs.bag_colour)


def _draw_handbag(layer: _Layer, attrs: PersonAttributes, body: _Body, hand: tuple[float, float]) -> None:
    half_width, height = 0.05 * body.size, 0.1 * body.size
    layer.rectangle(hand[0] - half_width, hand[1], hand[0] + half_width, hand[1] + height, attrs.bag_colour)


def _draw_person(layer: _Layer, attrs: PersonAttributes, pose: Pose, body: _Body) -> None:
    """Paints body parts back to front; what hides what depends on the view."""
    if attrs.long_hair and pose.view != "back":
        _draw_long_hair(layer, attrs, body)
    if attrs.bag == "backpack" and pose.view == "side":
        _draw_backpack(layer, attrs, pose, body)
    _draw_legs(layer, attrs, pose, body)
    _draw_torso(layer, attrs, pose, body)
    if attrs.bag == "backpack" and pose.view != "side":
        _draw_backpack(layer, attrs, pose, body)
    if attrs.long_hair and pose.view == "back":
        _draw_long_hair(layer, attrs, body)
    hands = _draw_arms(layer, attrs, pose, body)
    if attrs.bag == "handbag":
        _draw_handbag(layer, attrs, body, hands[1])
    _draw_head(layer, attrs, pose, body)


def _crop_size(style: DomainStyle, rng: np.random.Generator) -> tuple[int, int]:
    height = int(rng.integers(style.crop_height[0], style.crop_height[1] + 1))
    return height, max(16, int(round(height * rng.uniform(*style.crop_aspect))))


def _clutter_colour(camera: Camera, rng: np.random.Generator) -> BGR:
    style = camera.domain
    return _hsv_colour(rng.uniform(*style.background_hue) + rng.normal(0, 15),
                       rng.uniform(*style.background_saturation), rng.uniform(*style.background_value))


def _draw_background(height: int, width: int, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Wall above the horizon, ground below, soft shading and grain, then a few objects."""
    style = camera.domain
    horizon = int(height * np.clip(camera.horizon + rng.normal(0, 0.04), 0.2, 0.8))
    scene = np.empty((height, width, 3), np.float32)
    scene[:horizon] = _jitter(camera.wall_colour, rng, 12)
    scene[horizon:] = _jitter(camera.ground_colour, rng, 12)
    shading = cv2.resize(rng.standard_normal((5, 3, 3), dtype=np.float32), (width, height),
                         interpolation=cv2.INTER_CUBIC)
    scene += style.texture_strength * shading
    scene += (style.texture_strength / 3) * rng.standard_normal((height, width, 1), dtype=np.float32)
    image = np.clip(scene, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(style.clutter_items[0], style.clutter_items[1] + 1))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        extent = rng.uniform(0.1, 0.4) * width
        colour = _clutter_colour(camera, rng)
        kind = _pick(rng, ("box", "blob", "rail"))
        if kind == "box":  # windows, signs, bins
            cv2.rectangle(image, _pt(x, y), _pt(x + extent, y + extent * rng.uniform(0.5, 2)), colour, -1)
        elif kind == "blob":  # bushes, lamps
            cv2.circle(image, _pt(x, y), max(1, int(extent / 2)), colour, -1)
        else:  # railings and kerbs
            cv2.line(image, (0, int(y)), (width, int(y + rng.normal(0, 5))), colour, max(1, int(extent / 6)))
    return image


def _draw_occluder(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> None:
    """Something between the camera and the person: a pole, a parked object or a passer-by."""
    height, width = image.shape[:2]
    kind = _pick(rng, ("pole", "object", "passer-by"))
    if kind == "pole":
        x, half = rng.uniform(0, width), width * rng.uniform(0.04, 0.10)
        grey = int(rng.uniform(40, 200))
        cv2.rectangle(image, _pt(x - half, 0), _pt(x + half, height), (grey, grey, grey), -1)
    elif kind == "object":  # a bench, car or bicycle hiding the legs
        x0 = rng.uniform(-0.3, 0.5) * width
        cv2.rectangle(image, _pt(x0, height * rng.uniform(0.55, 0.8)),
                      _pt(x0 + width * rng.uniform(0.5, 1.2), height), _clutter_colour(camera, rng), -1)
    else:  # someone walking past, closer to the camera, at one edge of the crop
        centre_x = width * (rng.uniform(-0.15, 0.15) + (0 if rng.random() < 0.5 else 1))
        half, head = width * rng.uniform(0.2, 0.35), width * rng.uniform(0.12, 0.18)
        shoulders = height * rng.uniform(0.2, 0.45)
        _, coat = _clothing_colour(rng, camera.domain)
        cv2.rectangle(image, _pt(centre_x - half, shoulders), _pt(centre_x + half, height), coat, -1)
        skin = _jitter(SKIN_TONES[2], rng, 40)
        cv2.circle(image, _pt(centre_x, shoulders - head), max(1, int(head)), skin, -1)


def _apply_camera(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """White balance, exposure, gamma, blur and sensor noise, each jittered around the camera's own."""
    balance = np.asarray(camera.white_balance) * np.exp(rng.normal(0, 0.03, 3))
    gain = camera.gain * np.exp(rng.normal(0, 0.08))
    gamma = camera.gamma * np.exp(rng.normal(0, 0.05))
    # Colour balance, exposure and gamma make one tone curve per channel, applied as a lookup table.
    levels = np.arange(256)[:, None] / 255
    curves = 255 * np.clip(levels * balance * gain, 0, 1) ** gamma
    image = cv2.LUT(image, np.round(curves).astype(np.uint8)[None])
    sigma = camera.blur_sigma * rng.uniform(0.6, 1.4)
    if sigma > 0.25:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = camera.noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)


def render_person(attrs: PersonAttributes, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """One image (BGR uint8, H x W x 3) of the person ``attrs`` seen by ``camera``."""
    height, width = _crop_size(camera.domain, rng)
    background = _draw_background(height, width, camera, rng)
    pose = sample_pose(camera, rng)
    body = _layout_body(attrs, pose, camera.domain, height, width, rng)
    layer = _Layer(height, width)
    _draw_person(layer, attrs, pose, body)
    layer.tilt(pose.lean, pivot=(body.cx, body.feet))
    image = layer.over(background)
    if rng.random() < camera.occlusion_rate:
        _draw_occluder(image, camera, rng)
    return _apply_camera(image, camera, rng)


def _zoom(image: np.ndarray, top: float, bottom: float, left: float = 0.0, right: float = 1.0) -> np.ndarray:
    """The window (fractions of height and width) stretched back to the full image size."""
    height, width = image.shape[:2]
    window = image[int(top * height):max(int(bottom * height), int(top * height) + 1),
                   int(left * width):max(int(right * width), int(left * width) + 1)]
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_LINEAR)


def render_distractor(camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """A gallery image of nobody in the test set: empty clutter or part of a passing stranger."""
    if rng.random() < 0.5:
        height, width = _crop_size(camera.domain, rng)
        image = _draw_background(height, width, camera, rng)
        for _ in range(int(rng.integers(1, 4))):
            _draw_occluder(image, camera, rng)
        return _apply_camera(image, camera, rng)
    stranger = render_person(sample_identity(rng, camera.domain), camera, rng)
    keep = rng.uniform(0.4, 0.65)
    return _zoom(stranger, 0, keep) if rng.random() < 0.5 else _zoom(stranger, 1 - keep, 1)


def render_junk(camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """A bad detection: a sliver at the edge of someone, or a tiny smeared figure."""
    person = render_person(sample_identity(rng, camera.domain), camera, rng)
    if rng.random() < 0.5:
        share = rng.uniform(0.2, 0.4)
        return _zoom(person, 0, 1, 0, share) if rng.random() < 0.5 else _zoom(person, 0, 1, 1 - share, 1)
    height, width = person.shape[:2]
    tiny = cv2.resize(person, (max(2, width // 6), max(2, height // 6)), interpolation=cv2.INTER_AREA)
    return cv2.resize(tiny, (width, height), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------------
# Planning a dataset: who is seen by which camera, which file each image goes to
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageJob:
    """One image to render: everything a worker process needs, nothing random left to decide."""

    file: str                        # subset/name.jpg
    pid: int
    camera: int
    kind: str                        # "person", "distractor" or "junk"
    seed_key: tuple[int, ...]
    attrs: PersonAttributes | None = None


class _Namer:
    """Unique, plausible file names: frame numbers advance along each camera track."""

    def __init__(self, style: DomainStyle, rng: np.random.Generator) -> None:
        self.style, self.rng, self.used = style, rng, set()

    def track(self, pid: int, camera: int, count: int) -> list[str]:
        sequence = int(self.rng.integers(1, 7))
        frame = int(self.rng.integers(0, 200_000))
        names = []
        for _ in range(count):
            frame += int(self.rng.integers(5, 120))
            box = int(self.rng.integers(1, 5))
            name = self.style.file_name(pid, camera, frame, sequence, box)
            while name in self.used:
                frame += 1
                name = self.style.file_name(pid, camera, frame, sequence, box)
            self.used.add(name)
            names.append(name)
        return names


@dataclass(frozen=True)
class _Params:
    """What the manifest records: equal parameters give byte-identical files."""

    style: str
    num_train_ids: int
    num_test_ids: int
    images_per_camera: int
    num_distractors: int
    num_junk: int
    seed: int
    generator_version: int = GENERATOR_VERSION


def _draw_pids(rng: np.random.Generator, num_train: int, num_test: int) -> tuple[list[int], list[int]]:
    """Disjoint sorted train and test ids, scattered over 1..1501 (more if asked for many) as in Market."""
    total = num_train + num_test
    highest = min(MAX_PID, max(1501, 2 * total))
    pids = [int(p) for p in rng.choice(np.arange(1, highest + 1), total, replace=False)]
    return sorted(pids[:num_train]), sorted(pids[num_train:])


def _plan(style: DomainStyle, params: _Params) -> list[_ImageJob]:
    """Every image of the dataset with its file name and seed.

    Train and test identities are disjoint. A test identity is seen by at least two cameras with at
    least two images each; the first image of some of its cameras becomes a query, so every query has
    a gallery match in another camera (and usually one in its own, which evaluation ignores).
    """
    style_id = STYLES.index(style.name)
    rng = _rng(params.seed, style_id, _PLAN)
    train_pids, test_pids = _draw_pids(rng, params.num_train_ids, params.num_test_ids)
    namer = _Namer(style, rng)
    jobs: list[_ImageJob] = []
    for pid in train_pids + test_pids:
        is_test = pid in test_pids  # a short list; the loop is not the slow part
        attrs, tracks = _identity(style, params, pid, min_images=2 if is_test else 1)
        query_cameras = [camera for camera in tracks if rng.random() < 0.7] or [min(tracks)]
        for camera, count in tracks.items():
            for shot, name in enumerate(namer.track(pid, camera, count)):
                if not is_test:
                    subset = "bounding_box_train"
                else:
                    subset = "query" if shot == 0 and camera in query_cameras else "bounding_box_test"
                jobs.append(_ImageJob(f"{subset}/{name}", pid, camera, "person",
                                      (params.seed, style_id, _IMAGE, pid, camera, shot), attrs))

    for kind, pid, tag, count in (("distractor", DISTRACTOR_PID, _DISTRACTOR, params.num_distractors),
                                  ("junk", JUNK_PID, _JUNK, params.num_junk)):
        for index in range(count):
            camera = int(rng.integers(1, style.num_cameras + 1))
            name = namer.track(pid, camera, 1)[0]
            jobs.append(_ImageJob(f"bounding_box_test/{name}", pid, camera, kind,
                                  (params.seed, style_id, tag, index)))
    return jobs


def _identity(style: DomainStyle, params: _Params, pid: int,
              min_images: int) -> tuple[PersonAttributes, dict[int, int]]:
    """A person's attributes and how many images each of their cameras took."""
    rng = _rng(params.seed, STYLES.index(style.name), _IDENTITY, pid)
    attrs = sample_identity(rng, style)
    low, high = style.cameras_per_identity
    num_cameras = int(rng.integers(low, min(high, style.num_cameras) + 1))
    cameras = sorted(int(c) for c in rng.choice(style.num_cameras, num_cameras, replace=False) + 1)
    counts = [max(min_images, params.images_per_camera + int(rng.integers(-1, 2))) for _ in cameras]
    return attrs, dict(zip(cameras, counts, strict=True))


def _summarise(jobs: list[_ImageJob]) -> dict[str, dict[str, int]]:
    summary = {}
    for subset in SUBSETS:
        chosen = [job for job in jobs if job.file.startswith(subset + "/")]
        summary[subset] = {
            "identities": len({job.pid for job in chosen if job.pid > 0}),
            "images": len(chosen),
            "cameras": len({job.camera for job in chosen}),
            "distractors": sum(job.pid == DISTRACTOR_PID for job in chosen),
            "junk": sum(job.pid == JUNK_PID for job in chosen),
        }
    return summary


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def _render_job(cameras: list[Camera], dataset_dir: Path, job: _ImageJob) -> None:
    camera = cameras[job.camera - 1]
    rng = _rng(*job.seed_key)
    if job.kind == "person":
        image = render_person(job.attrs, camera, rng)
    elif job.kind == "distractor":
        image = render_distractor(camera, rng)
    else:
        image = render_junk(camera, rng)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, camera.domain.jpeg_quality])
    if not ok:
        raise ReIDError(f"OpenCV could not encode the synthetic image {dataset_dir / job.file}.")
    (dataset_dir / job.file).write_bytes(encoded.tobytes())


def _limit_worker_threads() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core it was given


def _write_images(jobs: list[_ImageJob], cameras: list[Camera], dataset_dir: Path, workers: int) -> None:
    render = partial(_render_job, cameras, dataset_dir)
    if workers == 1:
        for job in jobs:
            render(job)
        return
    with Pool(workers, initializer=_limit_worker_threads) as pool:
        for _ in pool.imap_unordered(render, jobs, chunksize=32):
            pass


def read_manifest(dataset_dir: str | Path) -> dict | None:
    """The generation record of a synthetic dataset folder, or None if there is none readable."""
    try:
        return json.loads((Path(dataset_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_up_to_date(dataset_dir: Path, params: _Params) -> bool:
    manifest = read_manifest(dataset_dir)
    if manifest is None or manifest.get("params") != asdict(params):
        return False
    # A matching record is not enough if someone deleted images since.
    for subset, counts in manifest.get("subsets", {}).items():
        folder = dataset_dir / subset
        if not folder.is_dir() or sum(1 for _ in folder.glob("*.jpg")) != counts["images"]:
            return False
    return True


def _validate(style: DomainStyle, params: _Params, workers: int) -> None:
    minimums = {"num_train_ids": 1, "num_test_ids": 1, "images_per_camera": 1, "num_distractors": 0,
                "num_junk": 0, "seed": 0, "workers": 1}
    values = {**asdict(params), "workers": workers}
    for name, minimum in minimums.items():
        if values[name] < minimum:
            raise ReIDError(f"Synthetic dataset option {name} must be at least {minimum}, "
                            f"got {values[name]}.")
    if params.num_train_ids + params.num_test_ids > MAX_PID:
        raise ReIDError(f"At most {MAX_PID} synthetic identities fit four-digit ids; asked for "
                        f"{params.num_train_ids} train + {params.num_test_ids} test.")
    if not style.has_gallery_extras and (params.num_distractors or params.num_junk):
        raise ReIDError(f"The {style.name} layout has no distractor or junk gallery images (pid 0000 / -1); "
                        "leave num_distractors and num_junk unset for it.")


def generate_synthetic(style: str, root: str | Path, *, num_train_ids: int = 150, num_test_ids: int = 100,
                       images_per_camera: int = 4, num_distractors: int | None = None,
                       num_junk: int | None = None, seed: int = 0, workers: int | None = None,
                       force: bool = False) -> Path:
    """Write a synthetic dataset in the layout of ``style`` under ``root`` and return its folder.

    ``images_per_camera`` is the mean number of images per (identity, camera); test identities get
    at least two. ``num_distractors`` / ``num_junk`` default to the style's own (none for duke).
    A folder whose ``synthetic.json`` records the same parameters is left alone unless ``force``;
    otherwise only its three subset folders are replaced.
    """
    domain = get_style(style)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    params = _Params(
        style=domain.name, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
        images_per_camera=images_per_camera,
        num_distractors=domain.default_distractors if num_distractors is None else num_distractors,
        num_junk=domain.default_junk if num_junk is None else num_junk, seed=seed,
    )
    _validate(domain, params, workers)
    dataset_dir = Path(root) / domain.folder
    if not force and _is_up_to_date(dataset_dir, params):
        logger.info("%s is up to date (%s); skipping generation.", dataset_dir, MANIFEST_NAME)
        return dataset_dir

    jobs = _plan(domain, params)
    # The manifest goes first and comes back last, so an interrupted run is never mistaken for a finished one.
    (dataset_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for subset in SUBSETS:
        if (dataset_dir / subset).exists():
            shutil.rmtree(dataset_dir / subset)
        (dataset_dir / subset).mkdir(parents=True)
    _write_images(jobs, make_cameras(domain, seed), dataset_dir, workers)
    manifest = {"generator": __name__, "params": asdict(params), "subsets": _summarise(jobs)}
    (dataset_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return dataset_dir
