"""Synthetic face masks drawn from dlib's 68 landmarks: surgical, cloth, N95 and KN95.

Every mask is drawn with OpenCV and numpy, without template pictures. The outline is built in
an upright face frame (eye line horizontal), so it follows head roll, and from the jaw
landmarks on each side, so it follows yaw. The bottom of the mask's centre line also shifts
towards the side that the nose points to, as the front of a real mask does because it sits in
front of the face.
The fabric is shaded by the
smoothed luminance of the skin it covers, so a dark, bright or side-lit photograph gets a
matching mask, and a greyscale photograph gets a greyscale mask.

Lengths in this module are in units of the inter-ocular distance D (between the eye centres),
measured in the upright face frame, whose origin is the midpoint between the eyes and whose
y axis points down the face. On the 204 London faces the nose tip (landmark 30) lies about
0.49 D below the eye line, the lower eyelids about 0.06 D below it and the chin (landmark 8)
about 1.83 D below it.

Example:
    >>> masked = render_mask(image_rgb, detection.landmarks, MaskType.KN95, MaskStyle(seed=3))
    >>> masked.image.shape == image_rgb.shape
    True
"""

from __future__ import annotations

import colorsys
import enum
import functools
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from fer_core.constants import CHIN, JAW, LANDMARK_COUNT, LEFT_EYE, NOSE_BRIDGE, NOSE_TIP, RIGHT_EYE, MaskType

logger = logging.getLogger(__name__)

DEFAULT_COVERAGE = 0.6

# Sub-pixel precision of polygon filling: OpenCV takes coordinates as integers times 2**shift.
_FILL_SHIFT = 4


class ClothPattern(str, enum.Enum):
    """Fabric pattern of a cloth mask."""

    PLAIN = "plain"
    STRIPES = "stripes"
    DOTS = "dots"
    CHECKS = "checks"


@dataclass(frozen=True)
class MaskStyle:
    """Appearance of one drawn mask.

    Attributes:
        coverage: how far up the nose the mask's top edge reaches, in [0, 1]: 0 is just above
            the nose tip (landmark 30), 1 is the nose bridge just below the eye line.
        color: base RGB colour; None chooses one from the seed.
        pattern: fabric pattern of a cloth mask; None chooses one from the seed. Other mask
            types ignore it.
        seed: seed for colour, pattern and fabric texture; the same seed gives the same mask.
    """

    coverage: float = DEFAULT_COVERAGE
    color: tuple[int, int, int] | None = None
    pattern: ClothPattern | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _validate_coverage(self.coverage)

        if self.color is not None:
            color = tuple(self.color)
            valid = len(color) == 3 and all(
                isinstance(value, (int, np.integer)) and 0 <= value <= 255 for value in color
            )
            if not valid:
                raise ValueError(f"color must be three integers in 0-255 (R, G, B), got {self.color!r}")
            object.__setattr__(self, "color", tuple(int(value) for value in color))

        if self.pattern is not None:
            try:
                object.__setattr__(self, "pattern", ClothPattern(self.pattern))
            except ValueError as error:
                choices = ", ".join(pattern.value for pattern in ClothPattern)
                raise ValueError(f"unknown cloth pattern {self.pattern!r}; choose one of: {choices}") from error

        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class MaskedFace:
    """A photograph with a drawn mask.

    Attributes:
        image: uint8 image with the mask, of the same shape as the input.
        polygon: (N, 2) float32 outline of the mask body in image pixels, without ear loops
            or straps.
        mask_type: the mask type drawn.
    """

    image: np.ndarray
    polygon: np.ndarray
    mask_type: MaskType


@dataclass(frozen=True)
class _ShapeSpec:
    """Outline parameters of one mask type, in units of the inter-ocular distance D.

    Attributes:
        top_drop: (t, drop) pairs: how far the top edge lies below its centre point at the
            fraction t of the way from the centre line to the side of the face.
        side_margin: distance of the outline outside the jaw landmarks.
        chin_drop: extra distance of the outline below the chin.
        protrusion: sideways shift of the bottom of the mask's centre line per unit of yaw,
            because the front of the mask sits in front of the face. The top rests on the nose
            and does not shift.
        pointed: whether the bottom edge runs straight to a point under the chin (KN95).
        smooth: whether the outline is smoothed with a spline; else its corners stay sharp.
    """

    top_drop: tuple[tuple[float, float], ...]
    side_margin: float
    chin_drop: float
    protrusion: float
    pointed: bool = False
    smooth: bool = True


_SHAPES: dict[MaskType, _ShapeSpec] = {
    MaskType.SURGICAL: _ShapeSpec(
        top_drop=((0.0, 0.0), (0.18, 0.035), (0.5, 0.08), (0.8, 0.13), (1.0, 0.17)),
        side_margin=0.06,
        chin_drop=0.16,
        protrusion=0.1,
    ),
    MaskType.CLOTH: _ShapeSpec(
        top_drop=((0.0, 0.0), (0.25, 0.04), (0.5, 0.11), (0.75, 0.2), (1.0, 0.32)),
        side_margin=0.05,
        chin_drop=0.14,
        protrusion=0.2,
    ),
    MaskType.N95: _ShapeSpec(
        top_drop=((0.0, 0.0), (0.3, 0.03), (0.55, 0.1), (0.75, 0.2), (0.9, 0.34), (1.0, 0.5)),
        side_margin=0.03,
        chin_drop=0.1,
        protrusion=0.4,
    ),
    MaskType.KN95: _ShapeSpec(
        top_drop=((0.0, 0.0), (1.0, 0.3)),
        side_margin=0.04,
        chin_drop=0.3,
        protrusion=0.5,
        pointed=True,
        smooth=False,
    ),
}

# Height of the top edge's centre point at coverage 0 and 1. At coverage 0 it lies this
# fraction of the eye-to-nose-tip distance above the nose tip. At coverage 1 it lies this
# fraction of the eyelid-to-nose-tip distance below the lower eyelids.
_TOP_ABOVE_NOSE_TIP = 0.22
_TOP_BELOW_EYELIDS = 0.15
# The top edge never comes closer than this to the lower eyelids, in D.
_EYE_CLEARANCE = 0.06

# Jaw landmark that starts the straight bottom edge of a pointed mask on each side.
_POINTED_LEFT_JAW = 6
_POINTED_RIGHT_JAW = 10
_LOWER_EYELIDS = (40, 41, 46, 47)
# Bottom of the nose between the nostrils, and the bottom of the lower lip.
_NOSE_BOTTOM = 33
_LOWER_LIP = 57


def _validate_coverage(coverage: float) -> None:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float, np.integer, np.floating)):
        raise ValueError(f"coverage must be a number in [0, 1], got {coverage!r}")
    if not math.isfinite(coverage) or not 0.0 <= coverage <= 1.0:
        raise ValueError(
            f"coverage must be in [0, 1] (0: just above the nose tip, 1: nose bridge), got {coverage!r}"
        )


def _validate_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (LANDMARK_COUNT, 2):
        raise ValueError(f"landmarks must have shape ({LANDMARK_COUNT}, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("landmarks contain NaN or infinite values")
    return points


def _validate_mask_type(mask_type: MaskType) -> MaskType:
    choices = ", ".join(drawn.value for drawn in MaskType.drawn())
    try:
        mask_type = MaskType(mask_type)
    except ValueError as error:
        raise ValueError(f"unknown mask type {mask_type!r}; choose one of: {choices}") from error
    if mask_type not in _SHAPES:
        raise ValueError(f"mask type {mask_type.value!r} has no drawing; choose one of: {choices}")
    return mask_type


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FaceFrame:
    """Upright face frame: rotation that makes the eye line horizontal, and the landmarks in it.

    Attributes:
        origin: midpoint between the eye centres, in image pixels.
        rotation: 2 x 2 matrix that maps image offsets from the origin to upright coordinates.
        points: (68, 2) landmarks in upright coordinates, in pixels.
        eye_distance: inter-ocular distance D in pixels.
        yaw: nose position between the jaw sides, from -1 (nose at the left jaw line in the
            image) over 0 (frontal) to 1 (nose at the right jaw line).
    """

    origin: np.ndarray
    rotation: np.ndarray
    points: np.ndarray
    eye_distance: float
    yaw: float

    def to_image(self, upright: np.ndarray) -> np.ndarray:
        """Map upright points (N, 2) back to image pixels."""
        return upright @ self.rotation + self.origin


def _face_frame(landmarks: np.ndarray) -> _FaceFrame:
    right_eye = landmarks[list(RIGHT_EYE)].mean(axis=0)
    left_eye = landmarks[list(LEFT_EYE)].mean(axis=0)
    eye_vector = left_eye - right_eye
    eye_distance = float(np.linalg.norm(eye_vector))
    if eye_distance < 1.0:
        raise ValueError(
            f"landmarks place both eyes {eye_distance:.2f} pixels apart; the face is too small or the "
            "landmarks are invalid"
        )

    roll = math.atan2(eye_vector[1], eye_vector[0])
    rotation = np.array([[math.cos(roll), math.sin(roll)], [-math.sin(roll), math.cos(roll)]])
    origin = (right_eye + left_eye) / 2.0
    points = (landmarks - origin) @ rotation.T

    nose_tip = points[NOSE_TIP]
    left_side = _jaw_x_at(points, nose_tip[1], -1)
    right_side = _jaw_x_at(points, nose_tip[1], 1)
    left_span = max(nose_tip[0] - left_side, 1e-3)
    right_span = max(right_side - nose_tip[0], 1e-3)
    yaw = float(np.clip((left_span - right_span) / (left_span + right_span), -1.0, 1.0))

    return _FaceFrame(origin=origin, rotation=rotation, points=points, eye_distance=eye_distance, yaw=yaw)


def _monotonic(contour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) of a jaw half-contour ordered top to bottom, with y made non-decreasing."""
    y = np.maximum.accumulate(contour[:, 1])
    return contour[:, 0], y


def _jaw_x_at(points: np.ndarray, y: float, side: int) -> float:
    """Return the jaw line's x at height y on the left (-1) or right (+1) side of the image."""
    if side < 0:
        contour = points[JAW.start:CHIN + 1]
    else:
        contour = points[CHIN:JAW.stop][::-1]
    x, ys = _monotonic(contour)
    return float(np.interp(y, ys, x))


@dataclass(frozen=True)
class _Outline:
    """Mask outline in upright coordinates (pixels).

    Attributes:
        top: top edge from the left to the right corner.
        bottom: bottom edge from the left to the right corner, under the chin.
        centre_top: top end of the mask's centre line.
        centre_bottom: bottom end of the mask's centre line.
    """

    top: np.ndarray
    bottom: np.ndarray
    centre_top: np.ndarray
    centre_bottom: np.ndarray

    def polygon(self) -> np.ndarray:
        """Return the closed outline, top edge left to right, then bottom edge right to left."""
        return np.concatenate([self.top, self.bottom[::-1][1:-1]], axis=0)


def _top_centre_y(frame: _FaceFrame, coverage: float) -> float:
    points = frame.points
    tip_y = points[NOSE_TIP][1]
    eyelid_y = float(points[list(_LOWER_EYELIDS), 1].max())

    low = tip_y - _TOP_ABOVE_NOSE_TIP * tip_y
    high = eyelid_y + _TOP_BELOW_EYELIDS * (tip_y - eyelid_y)
    return float(low + coverage * (high - low))


def _nose_line_x(frame: _FaceFrame, y: float) -> float:
    """Return the x of the nose bridge line (landmarks 27-30) at height y."""
    bridge = frame.points[NOSE_BRIDGE.start:NOSE_BRIDGE.stop]
    return float(np.interp(y, *_monotonic(bridge)[::-1]))


def _top_edge(frame: _FaceFrame, spec: _ShapeSpec, coverage: float, centre_x: float) -> np.ndarray:
    unit = frame.eye_distance
    centre_y = _top_centre_y(frame, coverage)
    eyelid_y = float(frame.points[list(_LOWER_EYELIDS), 1].max())

    fractions = np.array([t for t, _ in spec.top_drop])
    drops = np.array([drop for _, drop in spec.top_drop]) * unit
    if spec.smooth:
        samples = np.linspace(0.0, 1.0, 9)
        drops = np.interp(samples, fractions, drops)
        fractions = samples
    side_y = centre_y + drops[-1]

    sides = []
    for side in (-1, 1):
        side_x = _jaw_x_at(frame.points, side_y, side) + side * spec.side_margin * unit
        xs = centre_x + fractions * (side_x - centre_x)
        ys = centre_y + drops
        # Keep the top edge clear of the eyes, which lie about 0.25-0.8 D from the centre line.
        under_eye = np.abs(xs - centre_x) > 0.15 * unit
        ys = np.where(under_eye, np.maximum(ys, eyelid_y + _EYE_CLEARANCE * unit), ys)
        sides.append(np.stack([xs, ys], axis=1))

    left, right = sides
    return np.concatenate([left[::-1], right[1:]], axis=0)


def _pushed_jaw(frame: _FaceFrame, spec: _ShapeSpec) -> np.ndarray:
    """Return the jaw landmarks moved outwards by the side margin and down under the chin."""
    points = frame.points
    unit = frame.eye_distance
    jaw = points[list(JAW)]
    centre = (points[_NOSE_BOTTOM] + points[_LOWER_LIP]) / 2.0

    outward = jaw - centre
    outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-6)
    pushed = jaw + outward * spec.side_margin * unit

    # Extra drop under the chin, largest at the chin and fading out by the jaw landmarks 4 and 12.
    offsets = np.abs(np.arange(len(jaw)) - CHIN) / 4.0
    weights = np.clip(np.cos(offsets * math.pi / 2.0), 0.0, None) * (offsets < 1.0)
    pushed[:, 1] += weights * spec.chin_drop * unit
    return pushed


def _bottom_edge(frame: _FaceFrame, spec: _ShapeSpec, top: np.ndarray, centre_bottom: np.ndarray) -> np.ndarray:
    pushed = _pushed_jaw(frame, spec)
    left_corner, right_corner = top[0], top[-1]

    left_indices = [i for i in range(JAW.start, CHIN) if pushed[i, 1] > left_corner[1]]
    right_indices = [i for i in range(CHIN + 1, JAW.stop) if pushed[i, 1] > right_corner[1]]
    if spec.pointed:
        left_indices = [i for i in left_indices if i <= _POINTED_LEFT_JAW]
        right_indices = [i for i in right_indices if i >= _POINTED_RIGHT_JAW]
        middle = [centre_bottom]
    else:
        middle = [pushed[CHIN]]

    chain = [left_corner, *pushed[left_indices], *middle, *pushed[right_indices], right_corner]
    return np.array(chain, dtype=np.float64)


def _centre_line(frame: _FaceFrame, spec: _ShapeSpec, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the top and bottom ends of the mask's centre line; yaw shifts the bottom end."""
    unit = frame.eye_distance
    shift = frame.yaw * spec.protrusion * unit
    top_y = _top_centre_y(frame, coverage)
    top = np.array([_nose_line_x(frame, top_y), top_y])

    chin = frame.points[CHIN]
    bottom = np.array([chin[0] + shift, chin[1] + (spec.chin_drop + spec.side_margin) * unit])
    return top, bottom


def _build_outline(frame: _FaceFrame, mask_type: MaskType, coverage: float) -> _Outline:
    spec = _SHAPES[mask_type]
    centre_top, centre_bottom = _centre_line(frame, spec, coverage)

    top = _top_edge(frame, spec, coverage, centre_top[0])
    bottom = _bottom_edge(frame, spec, top, centre_bottom)
    if spec.smooth:
        top = _catmull_rom(top, 4)
        bottom = _catmull_rom(bottom, 4)
    return _Outline(top=top, bottom=bottom, centre_top=centre_top, centre_bottom=centre_bottom)


def _catmull_rom(points: np.ndarray, samples: int) -> np.ndarray:
    """Return a Catmull-Rom spline through points with samples points per segment."""
    padded = np.concatenate([points[:1] * 2 - points[1:2], points, points[-1:] * 2 - points[-2:-1]])
    p0, p1, p2, p3 = padded[:-3], padded[1:-2], padded[2:-1], padded[3:]

    t = np.linspace(0.0, 1.0, samples, endpoint=False)[np.newaxis, :, np.newaxis]
    p0, p1, p2, p3 = (p[:, np.newaxis, :] for p in (p0, p1, p2, p3))
    curve = 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    return np.concatenate([curve.reshape(-1, 2), points[-1:]], axis=0)


def mask_outline(landmarks: np.ndarray, mask_type: MaskType, coverage: float) -> np.ndarray:
    """Compute the outline of a mask body from 68 landmarks.

    Args:
        landmarks: (68, 2) dlib landmarks (x, y) in image pixels.
        mask_type: one of MaskType.drawn().
        coverage: how far up the nose the top edge reaches, in [0, 1].

    Returns:
        (N, 2) float32 polygon in image pixels, top edge left to right, then bottom edge back.

    Raises:
        ValueError: invalid landmarks, mask type or coverage; the message names the value.
    """
    _validate_coverage(coverage)
    points = _validate_landmarks(landmarks)
    mask_type = _validate_mask_type(mask_type)

    frame = _face_frame(points)
    outline = _build_outline(frame, mask_type, float(coverage))
    return frame.to_image(outline.polygon()).astype(np.float32)


def polygon_area_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon into a boolean pixel mask of the given (height, width).

    A pixel belongs to the mask when its centre lies inside the polygon.
    """
    points = np.asarray(polygon, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError(f"polygon must have shape (N, 2) with N >= 3, got {points.shape}")
    if len(shape) < 2 or min(shape[:2]) < 1:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {shape!r}")

    canvas = np.zeros(tuple(int(size) for size in shape[:2]), dtype=np.uint8)
    scaled = np.round(points * (1 << _FILL_SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [scaled], 1, lineType=cv2.LINE_8, shift=_FILL_SHIFT)
    return canvas.astype(bool)


# ---------------------------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------------------------

# Surgical: blue, sky blue, white, mint, pink and black, blue being the most common.
_SURGICAL_COLORS = (
    (122, 172, 210), (146, 194, 226), (236, 238, 240), (158, 208, 194), (234, 178, 196), (58, 60, 66),
)
_SURGICAL_WEIGHTS = (0.4, 0.2, 0.15, 0.1, 0.08, 0.07)
_N95_COLORS = ((238, 236, 230), (226, 222, 210), (206, 208, 212), (196, 212, 228))
_N95_STRAP_COLORS = ((232, 196, 52), (52, 98, 188), (236, 236, 236), (232, 128, 44), (84, 156, 92))
_VALVE_COLORS = ((150, 152, 158), (232, 128, 44), (60, 100, 180), (236, 236, 236), (70, 72, 78))
_KN95_COLORS = (
    (240, 240, 240), (48, 48, 54), (152, 154, 160), (234, 186, 200), (172, 200, 230), (222, 208, 186),
)
_LOOP_WHITE = (238, 238, 236)
# Seed entropy per mask type, so that one style seed gives each type its own colours, and a
# separate stream for fabric texture noise.
_TYPE_SEED = {MaskType.SURGICAL: 1, MaskType.CLOTH: 2, MaskType.N95: 3, MaskType.KN95: 4}
_TEXTURE_STREAM = 7


@dataclass(frozen=True)
class _Palette:
    """Colours (RGB in 0-1) and seeded choices for one mask.

    Attributes:
        base: main fabric colour.
        accent: pattern colour of a cloth mask or strap colour of an N95.
        loop: ear loop colour.
        pattern: cloth pattern, None for other types.
        valve_color: N95 exhalation valve colour, None when the mask has no valve.
        pattern_angle: stripe angle in radians for cloth stripes.
        pattern_period: pattern period in units of D.
    """

    base: np.ndarray
    accent: np.ndarray
    loop: np.ndarray
    pattern: ClothPattern | None
    valve_color: np.ndarray | None
    pattern_angle: float
    pattern_period: float


def _rgb(color: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(color, dtype=np.float32) / 255.0


def _pick(
    rng: np.random.Generator,
    colors: tuple[tuple[int, int, int], ...],
    weights: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Pick one of the colours and vary its brightness and tint slightly."""
    index = rng.choice(len(colors), p=weights)
    jitter = rng.uniform(-0.03, 0.03) + rng.uniform(-0.008, 0.008, size=3)
    return np.clip(_rgb(colors[index]) + jitter, 0.0, 1.0).astype(np.float32)


def _cloth_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return a random fabric colour and a pattern colour: a pale or dark shade of it, or another hue."""
    hue = rng.uniform(0.0, 1.0)
    base = colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.85), rng.uniform(0.35, 0.9))

    kind = rng.choice(3)
    if kind == 0:
        accent = colorsys.hsv_to_rgb(hue, 0.08, 0.95)
    elif kind == 1:
        accent = colorsys.hsv_to_rgb(hue, 0.5, 0.15)
    else:
        other_hue = (hue + rng.uniform(0.3, 0.7)) % 1.0
        accent = colorsys.hsv_to_rgb(other_hue, rng.uniform(0.4, 0.8), rng.uniform(0.5, 0.95))
    return np.array(base, dtype=np.float32), np.array(accent, dtype=np.float32)


@functools.lru_cache(maxsize=1024)
def _palette(mask_type: MaskType, style: MaskStyle) -> _Palette:
    """Choose the colours of one mask from its style; the cached arrays must not be modified."""
    rng = np.random.default_rng([style.seed, _TYPE_SEED[mask_type]])
    accent = _rgb(_LOOP_WHITE)
    loop = _rgb(_LOOP_WHITE)
    pattern = None
    valve_color = None

    if mask_type is MaskType.SURGICAL:
        base = _pick(rng, _SURGICAL_COLORS, _SURGICAL_WEIGHTS)
    elif mask_type is MaskType.CLOTH:
        base, accent = _cloth_colors(rng)
        pattern = style.pattern or ClothPattern(rng.choice([pattern.value for pattern in ClothPattern]))
        loop = base * 0.9
    elif mask_type is MaskType.N95:
        base = _pick(rng, _N95_COLORS)
        accent = _pick(rng, _N95_STRAP_COLORS)
        if rng.uniform() < 0.5:
            valve_color = _pick(rng, _VALVE_COLORS)
    else:
        base = _pick(rng, _KN95_COLORS)
        loop = base if rng.uniform() < 0.5 else _rgb(_LOOP_WHITE)

    if style.color is not None:
        base = _rgb(style.color)
        if mask_type is MaskType.CLOTH:
            loop = base * 0.9

    angle = float(rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4, math.pi / 6]))
    period = float(rng.uniform(0.13, 0.22))
    for color in (base, accent, loop, valve_color):
        if color is not None:
            color.setflags(write=False)
    return _Palette(base=base, accent=accent, loop=loop, pattern=pattern, valve_color=valve_color,
                    pattern_angle=angle, pattern_period=period)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Surface:
    """Per-pixel coordinates of the mask inside the region of interest (ROI).

    Attributes:
        alpha: anti-aliased coverage of the mask body, in [0, 1].
        u: across the mask, -1 at the left side, 0 on the centre line, 1 at the right side.
        v: down the mask, 0 at the top edge and 1 at the bottom edge.
        across: distance from the centre line along the surface, in pixels.
        down: distance below the top edge, in pixels.
        height: local height of the mask (top to bottom edge), in pixels.
        edge_distance: distance to the outline, in pixels, inside the mask.
        unit: the inter-ocular distance D in pixels.
        yaw: the face's yaw, from -1 to 1.
    """

    alpha: np.ndarray
    u: np.ndarray
    v: np.ndarray
    across: np.ndarray
    down: np.ndarray
    height: np.ndarray
    edge_distance: np.ndarray
    unit: float
    yaw: float


def _surface(frame: _FaceFrame, outline: _Outline, polygon: np.ndarray, roi: tuple[int, int, int, int]) -> _Surface:
    x0, y0, x1, y1 = roi
    unit = frame.eye_distance
    local = polygon - np.array([x0, y0])

    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    scaled = np.round(local * (1 << _FILL_SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [scaled], 255, lineType=cv2.LINE_AA, shift=_FILL_SHIFT)
    alpha = cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), max(0.45, 0.006 * unit))
    edge_distance = cv2.distanceTransform((canvas > 127).astype(np.uint8), cv2.DIST_L2, 3)

    columns, rows = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    offset_x = columns - np.float32(frame.origin[0])
    offset_y = rows - np.float32(frame.origin[1])
    cos_roll, sin_roll = (np.float32(value) for value in frame.rotation[0])
    x = cos_roll * offset_x + sin_roll * offset_y
    y = -sin_roll * offset_x + cos_roll * offset_y

    top_x, top_y = outline.top[:, 0], outline.top[:, 1]
    bottom_x, bottom_y = outline.bottom[:, 0], outline.bottom[:, 1]
    top_edge = np.interp(x, np.maximum.accumulate(top_x), top_y).astype(np.float32)
    bottom_edge = np.interp(x, np.maximum.accumulate(bottom_x), bottom_y).astype(np.float32)
    height = np.maximum(bottom_edge - top_edge, 1.0)
    down = y - top_edge
    v = np.clip(down / height, 0.0, 1.0)

    centre_top, centre_bottom = outline.centre_top, outline.centre_bottom
    slope = (centre_bottom[0] - centre_top[0]) / max(centre_bottom[1] - centre_top[1], 1e-6)
    centre_x = np.float32(centre_top[0]) + np.float32(slope) * (y - np.float32(centre_top[1]))
    left_width = max(centre_top[0] - outline.top[0, 0], 1.0)
    right_width = max(outline.top[-1, 0] - centre_top[0], 1.0)
    offset = x - centre_x
    u = np.where(offset < 0, offset / np.float32(left_width), offset / np.float32(right_width))
    mean_width = (left_width + right_width) / 2.0
    across = u * np.float32(mean_width)

    return _Surface(alpha=alpha, u=np.clip(u, -1.0, 1.0), v=v, across=across, down=down, height=height,
                    edge_distance=edge_distance, unit=unit, yaw=frame.yaw)


def _line(distance: np.ndarray, width: float) -> np.ndarray:
    """Return an anti-aliased line profile: 1 on the line, falling to 0 over about width pixels."""
    return np.exp(-np.square(distance / max(width, 0.5)))


def _fabric_noise(rng: np.random.Generator, shape: tuple[int, int], amount: float) -> np.ndarray:
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.7)
    return 1.0 + amount * noise


def _paint_surgical(surface: _Surface, palette: _Palette, rng: np.random.Generator) -> np.ndarray:
    unit = surface.unit
    shade = np.ones_like(surface.v)

    # Three pleats across the middle: each fold is brighter towards its lower crease, which
    # casts a thin shadow on the band below it.
    pleat_start, pleat_period, pleat_count = 0.24, 0.18, 3
    phase = (surface.v - pleat_start) / pleat_period
    in_pleats = (phase >= 0) & (phase < pleat_count)
    ramp = phase - np.floor(phase)
    shade = np.where(in_pleats, 0.95 + 0.08 * ramp, shade)
    for k in range(1, pleat_count + 1):
        crease = (surface.v - (pleat_start + k * pleat_period)) * surface.height
        shade -= 0.28 * _line(crease - 0.004 * unit, 0.014 * unit)
        shade += 0.06 * _line(crease + 0.02 * unit, 0.018 * unit)

    # Bound edges: a band along the outline with a seam line inside it.
    binding = 0.075 * unit
    shade *= np.where(surface.edge_distance < binding, 0.96, 1.0)
    shade -= 0.1 * _line(surface.edge_distance - binding, 0.01 * unit)

    shade *= _fabric_noise(rng, shade.shape, 0.02)
    return palette.base[np.newaxis, np.newaxis, :] * shade[..., np.newaxis]


def _cloth_pattern_mix(surface: _Surface, palette: _Palette) -> np.ndarray:
    """Return how much of the accent colour each pixel shows, in [0, 1]."""
    unit = surface.unit
    period = palette.pattern_period * unit
    across, down = surface.across, surface.down

    if palette.pattern is ClothPattern.STRIPES:
        coordinate = across * math.sin(palette.pattern_angle) + down * math.cos(palette.pattern_angle)
        distance = np.abs((coordinate / period) % 1.0 - 0.5) * period
        return np.clip(0.2 * period - distance + 0.5, 0.0, 1.0)

    if palette.pattern is ClothPattern.DOTS:
        row = np.floor(down / period)
        shifted = across + (row % 2) * period / 2.0
        dx = (shifted / period) % 1.0 - 0.5
        dy = (down / period) % 1.0 - 0.5
        distance = np.hypot(dx, dy) * period
        return np.clip(0.27 * period - distance + 0.5, 0.0, 1.0)

    if palette.pattern is ClothPattern.CHECKS:
        band_x = np.clip(0.25 * period - np.abs((across / period) % 1.0 - 0.5) * period + 0.5, 0.0, 1.0)
        band_y = np.clip(0.25 * period - np.abs((down / period) % 1.0 - 0.5) * period + 0.5, 0.0, 1.0)
        return 0.5 * band_x + 0.5 * band_y

    # Plain weave: a faint cross-hatch of threads.
    thread = 0.02 * unit + 1.0
    hatch = np.sin(across * (2 * math.pi / thread)) * np.sin(down * (2 * math.pi / thread))
    return 0.04 * (hatch + 1.0)


def _paint_cloth(surface: _Surface, palette: _Palette, rng: np.random.Generator) -> np.ndarray:
    unit = surface.unit
    mix = _cloth_pattern_mix(surface, palette)[..., np.newaxis]
    color = palette.base * (1.0 - mix) + palette.accent * mix

    # Padded fabric: slightly darker towards the outline, a hem, and a centre seam.
    shade = 0.9 + 0.1 * np.clip(surface.edge_distance / (0.2 * unit), 0.0, 1.0)
    shade -= 0.12 * _line(surface.edge_distance - 0.06 * unit, 0.012 * unit)
    shade -= 0.22 * _line(surface.across, 0.012 * unit)
    shade += 0.06 * _line(surface.across - 0.025 * unit, 0.02 * unit)

    shade *= _fabric_noise(rng, shade.shape, 0.025)
    return color * shade[..., np.newaxis]


def _paint_n95(surface: _Surface, palette: _Palette, rng: np.random.Generator) -> np.ndarray:
    unit = surface.unit
    color = np.broadcast_to(palette.base, surface.v.shape + (3,)).copy()

    # Moulded cup: brightest in the middle, falling off towards a rolled rim.
    dome = 1.04 - 0.16 * (np.square(surface.u) + np.square((surface.v - 0.5) * 1.7))
    shade = np.clip(dome, 0.8, 1.04)
    shade -= 0.1 * _line(surface.edge_distance - 0.05 * unit, 0.02 * unit)
    shade *= np.where(surface.edge_distance < 0.04 * unit, 0.93, 1.0)

    # Metal nose clip under the top edge.
    clip_mask = (np.abs(surface.across) < 0.32 * unit) & (surface.down > 0.035 * unit) & (surface.down < 0.09 * unit)
    clip_alpha = cv2.GaussianBlur(clip_mask.astype(np.float32), (0, 0), 0.6)
    color = color * (1.0 - clip_alpha[..., np.newaxis]) + np.float32(0.72) * clip_alpha[..., np.newaxis]

    if palette.valve_color is None:
        shade -= 0.2 * _line(surface.across, 0.012 * unit) * (surface.v > 0.08)
        shade += 0.05 * _line(surface.across - 0.02 * unit, 0.02 * unit)
    else:
        color = _paint_valve(surface, color, palette.valve_color)

    shade *= _fabric_noise(rng, shade.shape, 0.02)
    return color * shade[..., np.newaxis]


def _paint_valve(surface: _Surface, color: np.ndarray, valve_color: np.ndarray) -> np.ndarray:
    """Paint a round exhalation valve with a ring and slots on the cheek turned to the camera."""
    unit = surface.unit
    side = -1.0 if surface.yaw > 0 else 1.0
    centre_across = side * 0.42 * unit
    centre_down = 0.62 * unit
    radius = 0.2 * unit

    near = (np.abs(surface.across - centre_across) < radius + 2) & (np.abs(surface.down - centre_down) < radius + 2)
    rows = np.flatnonzero(near.any(axis=1))
    columns = np.flatnonzero(near.any(axis=0))
    if rows.size == 0 or columns.size == 0:
        return color
    window = np.s_[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]

    across = surface.across[window] - centre_across
    down = surface.down[window] - centre_down
    distance = np.hypot(across, down)
    body = np.clip(radius - distance + 0.5, 0.0, 1.0)[..., np.newaxis]

    ring = _line(distance - 0.72 * radius, 0.05 * radius)
    slots = (0.5 + 0.5 * np.cos(down * (2 * math.pi / (0.16 * radius)))) * (distance < 0.6 * radius)
    rim = _line(distance - radius, 0.06 * radius)
    valve = valve_color * (1.0 - 0.3 * ring - 0.18 * slots - 0.2 * rim)[..., np.newaxis]

    color = color.copy()
    color[window] = color[window] * (1.0 - body) + valve * body
    return color


def _paint_kn95(surface: _Surface, palette: _Palette, rng: np.random.Generator) -> np.ndarray:
    unit = surface.unit

    # Two panels meet at the vertical centre fold. The panel turned towards the camera is lit
    # more directly.
    toward = np.where(surface.u < 0, 1.0 + 0.05 * surface.yaw, 1.0 - 0.05 * surface.yaw)
    shade = np.where(surface.u < 0, 0.95, 1.0) * toward
    shade -= 0.3 * _line(surface.across, 0.01 * unit)
    shade += 0.08 * _line(surface.across - 0.022 * unit, 0.016 * unit)

    # Heat-sealed border: an embossed band of dots along the outline.
    seal = 0.06 * unit
    shade -= 0.12 * _line(surface.edge_distance - seal, 0.01 * unit)
    dots = 0.5 + 0.5 * np.cos(surface.across * (2 * math.pi / (0.035 * unit))) * np.cos(
        surface.down * (2 * math.pi / (0.035 * unit))
    )
    shade -= 0.06 * dots * (surface.edge_distance < seal)

    shade *= _fabric_noise(rng, shade.shape, 0.015)
    return palette.base[np.newaxis, np.newaxis, :] * shade[..., np.newaxis]


_PAINTERS = {
    MaskType.SURGICAL: _paint_surgical,
    MaskType.CLOTH: _paint_cloth,
    MaskType.N95: _paint_n95,
    MaskType.KN95: _paint_kn95,
}


# Brightest face tones (99.5th percentile of the luminance inside the landmarks' convex hull) in
# a well-exposed photograph: on the London faces (512 x 512) they average 189 for white, 180 for
# East Asian and 157 for black subjects.
_WELL_EXPOSED_FACE_HIGHLIGHT = 195.0


def _exposure(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Return a brightness factor for the light on the face, from the face's brightest tones.

    Only pixels inside the landmarks' convex hull count, so a bright background or white
    clothing does not brighten the mask of a dim face. Dark skin lowers the factor somewhat,
    since its highlights are darker (see _WELL_EXPOSED_FACE_HIGHLIGHT).
    """
    hull = cv2.convexHull(np.round(landmarks).astype(np.int32))
    x, y, width, height = cv2.boundingRect(hull)
    image_height, image_width = image.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, image_width), min(y + height, image_height)
    if x1 <= x0 or y1 <= y0:
        return 1.0

    inside = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillConvexPoly(inside, hull - np.array([x0, y0], dtype=np.int32), 1)
    luminance = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    values = luminance[inside > 0]
    if values.size == 0:
        return 1.0
    highlight = _quantile(values, 0.995)
    return float(np.clip(highlight / _WELL_EXPOSED_FACE_HIGHLIGHT, 0.2, 1.05))


def _quantile(values: np.ndarray, fraction: float) -> float:
    """Return the value at a fraction of the sorted values; np.percentile is slower on small arrays."""
    index = int(round(fraction * (values.size - 1)))
    return float(np.partition(values, index)[index])


def _lighting(roi: np.ndarray, alpha: np.ndarray, unit: float, exposure: float) -> np.ndarray:
    """Return the light falling on each ROI pixel, from the smoothed luminance of the covered skin.

    The smoothing is a normalised convolution over the mask's pixels only, so background and
    hair around the mask do not leak into it, and it runs at a reduced resolution for speed.
    """
    luminance = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY).astype(np.float32)
    weight = (alpha > 0.5).astype(np.float32)
    covered = luminance[weight > 0]
    if covered.size == 0:
        return np.full(alpha.shape, exposure, dtype=np.float32)

    scale = min(1.0, 16.0 / max(unit, 1.0))
    small_size = (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale)))
    small_luminance = cv2.resize(luminance * weight, small_size, interpolation=cv2.INTER_AREA)
    small_weight = cv2.resize(weight, small_size, interpolation=cv2.INTER_AREA)

    sigma = 0.22 * unit * scale
    numerator = cv2.GaussianBlur(small_luminance, (0, 0), sigma)
    denominator = cv2.GaussianBlur(small_weight, (0, 0), sigma)
    reference = _quantile(covered, 0.5)
    smooth = np.where(denominator > 1e-3, numerator / np.maximum(denominator, 1e-3), reference)
    smooth = cv2.resize(smooth.astype(np.float32), (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_LINEAR)

    relative = np.clip(smooth / max(reference, 1.0), 0.3, 1.6) ** 0.85
    return (exposure * relative).astype(np.float32)


def _accessory_paths(frame: _FaceFrame, outline: _Outline, mask_type: MaskType) -> list[np.ndarray]:
    """Return the visible ear loops or head straps as upright polylines.

    Ear loops run from the mask's upper corner to the top of the ear and from its lower side
    to the ear lobe. An N95's head straps run from the same places over and under the ear,
    ending at the face outline, behind which they pass around the head.
    """
    unit = frame.eye_distance
    points = frame.points
    half = len(outline.bottom) // 2
    paths = []

    for side, corner, ear_landmark, lower_jaw, bottom_half in (
        (-1, outline.top[0], points[0], points[3], outline.bottom[:half]),
        (1, outline.top[-1], points[16], points[13], outline.bottom[half:]),
    ):
        # The ear on the side the face turns away from is hidden behind the cheek.
        if side * frame.yaw > 0.35:
            continue

        lower = bottom_half[np.argmin(np.abs(bottom_half[:, 1] - (corner[1] + 0.5 * unit)))]
        ear_x = ear_landmark[0] + side * 0.06 * unit
        start_upper = corner + np.array([-side * 0.05 * unit, 0.05 * unit])
        start_lower = lower + np.array([-side * 0.05 * unit, -0.04 * unit])

        if mask_type is MaskType.N95:
            upper_end = np.array([ear_x, ear_landmark[1] - 0.12 * unit])
            lower_end = np.array([lower_jaw[0] + side * 0.04 * unit, lower_jaw[1] + 0.25 * unit])
            paths.append(_quadratic(start_upper, (start_upper + upper_end) / 2, upper_end))
            paths.append(_quadratic(start_lower, (start_lower + lower_end) / 2, lower_end))
        else:
            ear_top = np.array([ear_x, ear_landmark[1] - 0.1 * unit])
            ear_lobe = np.array([ear_x - side * 0.02 * unit, ear_landmark[1] + 0.45 * unit])
            sag = np.array([0.0, 0.04 * unit])
            paths.append(_quadratic(start_upper, (start_upper + ear_top) / 2 + sag, ear_top))
            paths.append(_quadratic(start_lower, (start_lower + ear_lobe) / 2 + sag, ear_lobe))
    return paths


def _quadratic(start: np.ndarray, control: np.ndarray, end: np.ndarray, samples: int = 12) -> np.ndarray:
    t = np.linspace(0.0, 1.0, samples)[:, np.newaxis]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _roi(points: np.ndarray, shape: tuple[int, ...], pad: int) -> tuple[int, int, int, int] | None:
    height, width = shape[:2]
    x0 = max(int(np.floor(points[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(points[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(points[:, 0].max())) + pad + 1, width)
    y1 = min(int(np.ceil(points[:, 1].max())) + pad + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected the image as a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}; convert it with image.astype(np.uint8)")
    if image.ndim == 2:
        return np.repeat(image[:, :, np.newaxis], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"expected an image of shape (H, W, 3), (H, W, 1) or (H, W), got {image.shape}")


def _is_greyscale(image: np.ndarray) -> bool:
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2]))


def render_mask(
    image_rgb: np.ndarray,
    landmarks: np.ndarray,
    mask_type: MaskType,
    style: MaskStyle = MaskStyle(),
    greyscale: bool | None = None,
) -> MaskedFace:
    """Draw a mask on a copy of a face photograph.

    Args:
        image_rgb: uint8 RGB image (H, W, 3), or greyscale (H, W) or (H, W, 1); never modified.
        landmarks: (68, 2) dlib landmarks (x, y) of the face in image pixels.
        mask_type: one of MaskType.drawn().
        style: coverage, colour, cloth pattern and seed.
        greyscale: draw a grey mask; None detects it (three equal channels). Images of shape
            (H, W) or (H, W, 1) always get a grey mask.

    Returns:
        The masked image, of the same shape as the input, and the mask body's outline.

    Raises:
        ValueError: invalid image, landmarks, mask type or style; the message names the value.
    """
    rgb = _to_rgb(image_rgb)
    points = _validate_landmarks(landmarks)
    mask_type = _validate_mask_type(mask_type)
    if not isinstance(style, MaskStyle):
        raise ValueError(f"style must be a MaskStyle, got {type(style).__name__}")
    if greyscale is None or image_rgb.ndim == 2 or image_rgb.shape[2] == 1:
        greyscale = _is_greyscale(image_rgb)

    frame = _face_frame(points)
    outline = _build_outline(frame, mask_type, float(style.coverage))
    polygon = frame.to_image(outline.polygon())
    accessories = [frame.to_image(path) for path in _accessory_paths(frame, outline, mask_type)]

    unit = frame.eye_distance
    pad = int(math.ceil(0.08 * unit)) + 2
    roi = _roi(np.concatenate([polygon, *accessories]), rgb.shape, pad)
    if roi is None:
        logger.warning("the %s mask lies outside the %s image; nothing drawn", mask_type.value, rgb.shape)
        return MaskedFace(image=_restore_shape(rgb, image_rgb), polygon=polygon.astype(np.float32),
                          mask_type=mask_type)

    x0, y0, x1, y1 = roi
    original = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    surface = _surface(frame, outline, polygon, roi)
    rng = np.random.default_rng([style.seed, _TYPE_SEED[mask_type], _TEXTURE_STREAM])
    palette = _palette(mask_type, style)

    light = _lighting(original, surface.alpha, unit, _exposure(rgb, points))
    albedo = _PAINTERS[mask_type](surface, palette, rng)
    if greyscale:
        albedo = _grey(albedo)
        palette = _grey_palette(palette)
    mask_pixels = albedo * light[..., np.newaxis] * 255.0

    result = original.astype(np.float32)
    result = _draw_accessories(result, accessories, (x0, y0), palette, mask_type, light, unit)
    result = _cast_shadow(result, surface.alpha, unit)
    alpha = surface.alpha[..., np.newaxis]
    result = result * (1.0 - alpha) + mask_pixels * alpha

    rgb[y0:y1, x0:x1] = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    return MaskedFace(image=_restore_shape(rgb, image_rgb), polygon=polygon.astype(np.float32),
                      mask_type=mask_type)


def _grey(colors: np.ndarray) -> np.ndarray:
    """Return colours (..., 3) with each replaced by its luminance in all three channels."""
    luminance = colors @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(luminance[..., np.newaxis], 3, axis=-1).astype(np.float32)


def _grey_palette(palette: _Palette) -> _Palette:
    """Return the palette with every colour replaced by its grey."""
    return _Palette(
        base=_grey(palette.base),
        accent=_grey(palette.accent),
        loop=_grey(palette.loop),
        pattern=palette.pattern,
        valve_color=None if palette.valve_color is None else _grey(palette.valve_color),
        pattern_angle=palette.pattern_angle,
        pattern_period=palette.pattern_period,
    )


def _restore_shape(rgb: np.ndarray, original: np.ndarray) -> np.ndarray:
    if original.ndim == 2:
        return rgb[:, :, 0].copy()
    if original.shape[2] == 1:
        return rgb[:, :, :1].copy()
    return rgb


def _draw_accessories(
    result: np.ndarray,
    paths: list[np.ndarray],
    offset: tuple[int, int],
    palette: _Palette,
    mask_type: MaskType,
    light: np.ndarray,
    unit: float,
) -> np.ndarray:
    """Composite ear loops or head straps onto the ROI, lit like the mask."""
    if not paths:
        return result

    strap = mask_type is MaskType.N95
    thickness = max(1, round((0.04 if strap else 0.02) * unit))
    color = palette.accent if strap else palette.loop

    canvas = np.zeros(result.shape[:2], dtype=np.uint8)
    shifted = [np.round((path - np.array(offset)) * (1 << _FILL_SHIFT)).astype(np.int32) for path in paths]
    cv2.polylines(canvas, shifted, False, 255, thickness, cv2.LINE_AA, _FILL_SHIFT)
    alpha = canvas.astype(np.float32)[..., np.newaxis] / 255.0

    lit = color[np.newaxis, np.newaxis, :] * light[..., np.newaxis] * 255.0
    return result * (1.0 - alpha) + lit * alpha


def _cast_shadow(result: np.ndarray, alpha: np.ndarray, unit: float) -> np.ndarray:
    """Darken the skin just outside the mask, where the mask's thickness shades it."""
    shadow = cv2.GaussianBlur(alpha, (0, 0), max(0.8, 0.035 * unit))
    shift = np.float32([[1, 0, 0], [0, 1, 0.02 * unit]])
    shadow = cv2.warpAffine(shadow, shift, (alpha.shape[1], alpha.shape[0]))
    darkening = 1.0 - 0.3 * shadow * (1.0 - alpha)
    return result * darkening[..., np.newaxis]
