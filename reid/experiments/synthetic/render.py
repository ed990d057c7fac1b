"""Drawing one synthetic crop: a pedestrian (or a distractor, or a junk detection) seen by one camera."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from reid.experiments.synthetic.domains import (
    BGR,
    SKIN_TONES,
    Camera,
    DomainStyle,
    PersonAttributes,
    Pose,
    clothing_colour,
    hsv_colour,
    jitter,
    pick,
    sample_identity,
    sample_pose,
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
    return hsv_colour(rng.uniform(*style.background_hue) + rng.normal(0, 15),
                      rng.uniform(*style.background_saturation), rng.uniform(*style.background_value))


def _draw_background(height: int, width: int, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Wall above the horizon, ground below, soft shading and grain, then a few objects."""
    style = camera.domain
    horizon = int(height * np.clip(camera.horizon + rng.normal(0, 0.04), 0.2, 0.8))
    scene = np.empty((height, width, 3), np.float32)
    scene[:horizon] = jitter(camera.wall_colour, rng, 12)
    scene[horizon:] = jitter(camera.ground_colour, rng, 12)
    shading = cv2.resize(rng.standard_normal((5, 3, 3), dtype=np.float32), (width, height),
                         interpolation=cv2.INTER_CUBIC)
    scene += style.texture_strength * shading
    scene += (style.texture_strength / 3) * rng.standard_normal((height, width, 1), dtype=np.float32)
    image = np.clip(scene, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(style.clutter_items[0], style.clutter_items[1] + 1))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        extent = rng.uniform(0.1, 0.4) * width
        colour = _clutter_colour(camera, rng)
        kind = pick(rng, ("box", "blob", "rail"))
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
    kind = pick(rng, ("pole", "object", "passer-by"))
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
        _, coat = clothing_colour(rng, camera.domain)
        cv2.rectangle(image, _pt(centre_x - half, shoulders), _pt(centre_x + half, height), coat, -1)
        skin = jitter(SKIN_TONES[2], rng, 40)
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
