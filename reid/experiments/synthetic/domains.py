"""Synthetic ReID domains: the knobs of a domain, and the identities, cameras and poses drawn from it.

See :mod:`reid.experiments.synthetic` for what the synthetic data is for. Every random draw is seeded by
(seed, style, what, which), so the files are byte-identical for a seed whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from reid.utils.errors import ReIDError

BGR = tuple[int, int, int]
STYLES = ("market", "duke")
SUBSETS = ("bounding_box_train", "query", "bounding_box_test")
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


def rng_for(*key: int) -> np.random.Generator:
    """An independent generator for one (seed, style, what, which...) key."""
    return np.random.default_rng(np.random.SeedSequence(list(key)))


# Tags that keep the random streams of different kinds of draw apart.
PLAN_STREAM, IDENTITY_STREAM, CAMERA_STREAM, IMAGE_STREAM, DISTRACTOR_STREAM, JUNK_STREAM = range(6)


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


def jitter(colour: Sequence[float], rng: np.random.Generator, amount: float) -> BGR:
    """``colour`` moved by up to ``amount`` per channel, so palette-mates differ slightly."""
    moved = np.clip(np.asarray(colour, float) + rng.uniform(-amount, amount, 3), 0, 255)
    return tuple(int(c) for c in moved)  # type: ignore[return-value]


def clothing_colour(rng: np.random.Generator, style: DomainStyle,
                    avoid: str | None = None) -> tuple[str, BGR]:
    """A palette colour (name, BGR); the domain decides how often it is a dark one."""
    shades = DARK_COLOURS if rng.random() < style.dark_clothing_rate else LIGHT_COLOURS
    name = str(rng.choice([s for s in shades if s != avoid]))
    return name, jitter(CLOTHING_PALETTE[name], rng, 12)


def pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    probabilities = None if weights is None else np.asarray(weights) / np.sum(weights)
    return options[int(rng.choice(len(options), p=probabilities))]


def sample_identity(rng: np.random.Generator, style: DomainStyle) -> PersonAttributes:
    """Draw one person. Palettes are small on purpose: many people share each single attribute."""
    upper_name, upper_colour = clothing_colour(rng, style)
    _, pattern_colour = clothing_colour(rng, style, avoid=upper_name)
    _, lower_colour = clothing_colour(rng, style)
    _, bag_colour = clothing_colour(rng, style)
    return PersonAttributes(
        upper_colour=upper_colour,
        upper_pattern=pick(rng, UPPER_PATTERNS, (0.4, 0.2, 0.2, 0.2)),
        pattern_colour=pattern_colour,
        long_sleeves=bool(rng.random() < 0.5),
        lower_colour=lower_colour,
        lower_type=pick(rng, LOWER_TYPES, style.lower_type_weights),
        stature=float(rng.uniform(0.88, 1.0)),
        build=float(rng.uniform(0.10, 0.14)),
        head_size=float(rng.uniform(0.055, 0.07)),
        leg_length=float(rng.uniform(0.44, 0.52)),
        skin=jitter(pick(rng, SKIN_TONES), rng, 8),
        hair_colour=jitter(pick(rng, HAIR_COLOURS), rng, 8),
        long_hair=bool(rng.random() < 0.35),
        bag=pick(rng, BAGS, (0.5, 0.3, 0.2)),
        bag_colour=bag_colour,
        shoe_colour=jitter(pick(rng, SHOE_COLOURS), rng, 10),
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


def hsv_colour(hue: float, saturation: float, value: float) -> BGR:
    pixel = np.array([[[hue % 180, np.clip(saturation, 0, 255), np.clip(value, 0, 255)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0])  # type: ignore[return-value]


def make_cameras(style: DomainStyle, seed: int) -> list[Camera]:
    """The cameras of ``style`` for ``seed``; camera ``i`` is element ``i - 1``."""
    cameras = []
    for index in range(1, style.num_cameras + 1):
        rng = rng_for(seed, STYLES.index(style.name), CAMERA_STREAM, index)
        hue = rng.uniform(*style.background_hue)
        saturation = rng.uniform(*style.background_saturation)
        value = rng.uniform(*style.background_value)
        ground_value = value * rng.uniform(0.7, 1.0)
        cameras.append(Camera(
            index=index,
            domain=style,
            wall_colour=hsv_colour(hue, saturation, value),
            ground_colour=hsv_colour(hue + rng.normal(0, 10), saturation * 0.6, ground_value),
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
        view=pick(rng, VIEWS, camera.view_weights),
        leg_spread=float(rng.uniform(0.0, 0.14)),
        arm_angles=(float(rng.uniform(-10, 30)), float(rng.uniform(-10, 30))),
        lean=float(rng.normal(0, 3)),
    )
