"""Procedural chest-radiograph look-alikes for `chest_synthetic`: pure numpy, no global state.

A study is drawn in three steps, every random choice coming from a `numpy.random.Generator`
that the caller seeds:

1. Thorax (`sample_thorax`, once per patient, so that all of a patient's views and studies show
   the same chest): the rib cage, lungs, diaphragm domes, heart and mediastinum as a handful of
   numbers in a "chest frame" where `u` runs across the patient (the patient's right at u < 0,
   on the image's left, as a radiograph is read) or, in a lateral view, from front (u < 0) to
   back, and `v` runs down, both roughly in [-0.5, 0.5].
2. Finding (`sample_finding`, once per study): none, an `Opacity` (one or two hazy patches of
   consolidation inside a lung) or an `Effusion` (fluid at one or both lung bases under a
   meniscus that blunts the costophrenic angle).
3. Views (`render_view`): a canvas of random size, the chest placed on it by a random `Pose`
   (zoom, a small rotation, a shift), every field evaluated at the pixels' frame coordinates:
   soft-tissue thickness, lung air (which the finding replaces by fluid or consolidation),
   ribs, clavicles, spine; then exposure, detector blur and noise, a lead marker, and finally
   the image's mean intensity set to a target drawn independently of the finding
   (`set_mean`), so that a study's brightness says nothing of its label.

A frontal view shows both lungs side by side; a lateral view shows them superimposed, the
heart in front, the spine behind, and an effusion in the posterior costophrenic sulcus.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from tfds_mura.mura_synthetic.render import draw_marker, render_density

Point = tuple[float, float]

FINDINGS: tuple[str, ...] = ("normal", "opacity", "effusion")
"""The classes, in label order: the `kind` of a study's finding."""

MIN_SIDE, MAX_SIDE = 80, 144
"""Canvas sizes in pixels: the long side is drawn in [96, MAX_SIDE], the short one >= MIN_SIDE."""

FRAME_CENTER: Point = (0.0, -0.04)
"""The chest-frame point placed near the canvas' centre."""

MEAN_RANGE = (0.3, 0.6)
"""Each image's mean intensity (as a fraction of 255) is drawn uniformly from this range."""

AIR = 0.8
"""Fraction of the soft-tissue density that a full thickness of lung air takes away."""


@dataclasses.dataclass(frozen=True)
class Thorax:
    """One patient's chest, in frame units (see the module docstring).

    Attributes:
      width: half-width of the rib cage (the lungs' lateral walls), frontal view.
      depth: half the front-to-back depth of the chest, lateral view.
      apex: `v` of the lung apices.
      domes: `v` of the tops of the right and left diaphragm domes (the right one is higher).
      sulcus: how far each dome falls from its top to the costophrenic angle.
      power: exponent of the lungs' superellipse outline (2 = ellipse; more = squarer).
      mediastinum: half-width of the upper mediastinum.
      heart_center, heart_axes, heart_tilt: the cardiac silhouette (an ellipse; tilt in
        radians), frontal view; its left border bulges to the patient's left (u > 0).
      soft: density of soft tissue (the patient's habitus).
      rib_spacing, rib_phase, rib_drop, rib_width: posterior ribs, evenly spaced (spacing in
        `v`), shifted by `phase` (a fraction of the spacing), falling by `drop` from the spine
        to the lateral wall, `width` a fraction of the spacing thick.
      clavicles: `v` of the clavicles' medial and lateral ends.
    """

    width: float
    depth: float
    apex: float
    domes: Point
    sulcus: float
    power: float
    mediastinum: float
    heart_center: Point
    heart_axes: Point
    heart_tilt: float
    soft: float
    rib_spacing: float
    rib_phase: float
    rib_drop: float
    rib_width: float
    clavicles: Point


@dataclasses.dataclass(frozen=True)
class Patch:
    """A patch of consolidation: an elliptical haze that fills part of a lung's air.

    Attributes:
      side: -1 (the patient's right lung) or 1 (left).
      center: (u, v) in the frontal frame, inside that lung.
      depth: its front-to-back position in the lateral view, as a fraction in [-1, 1] of the
        lung's half-depth.
      axes: semi-axes (frame units) of the Gaussian haze.
      angle: orientation of the first axis, in radians.
      strength: fraction of the air it fills at its centre.
    """

    side: int
    center: Point
    depth: float
    axes: Point
    angle: float
    strength: float


@dataclasses.dataclass(frozen=True)
class Opacity:
    """One or two patches of consolidation."""

    patches: tuple[Patch, ...]
    kind: str = "opacity"


@dataclasses.dataclass(frozen=True)
class Effusion:
    """Pleural fluid at the base of one or both lungs.

    Attributes:
      sides: the lungs that hold fluid, among -1 (right) and 1 (left).
      heights: for each side, how far up the lateral chest wall (above the costophrenic angle)
        the fluid climbs, in frame units.
      rise: how much higher the fluid stands at the wall than medially, as a fraction of the
        height (the meniscus).
    """

    sides: tuple[int, ...]
    heights: tuple[float, ...]
    rise: float
    kind: str = "effusion"


Finding = Opacity | Effusion


@dataclasses.dataclass(frozen=True)
class Pose:
    """The map from the chest frame to pixels:
    `pixel = center + zoom * R(angle) @ (p - FRAME_CENTER)`."""

    zoom: float  # pixels per frame unit
    angle: float  # radians
    center: Point  # pixel (x, y) of FRAME_CENTER


# --------------------------------------------------------------------------------------------
# Small field helpers: every field is an array over the pixels' frame coordinates (u, v).


def ramp(x: np.ndarray | float, width: float) -> np.ndarray:
    """A soft step: 0 for x <= -width/2, 1 for x >= width/2, linear between."""
    return np.clip(np.asarray(x) / width + 0.5, 0.0, 1.0)


def superellipse(
    u: np.ndarray, v: np.ndarray, center: Point, axes: Point, power: float
) -> np.ndarray:
    """|du/a|**p + |dv/b|**p: below 1 inside the superellipse, 1 on its outline."""
    du = np.abs(u - center[0]) / axes[0]
    dv = np.abs(v - center[1]) / axes[1]
    return du**power + dv**power


def ellipse(
    u: np.ndarray, v: np.ndarray, center: Point, axes: Point, angle: float = 0.0
) -> np.ndarray:
    """Squared normalised radius of a rotated ellipse (1 on the outline)."""
    c, s = math.cos(angle), math.sin(angle)
    du, dv = u - center[0], v - center[1]
    a = (c * du + s * dv) / axes[0]
    b = (-s * du + c * dv) / axes[1]
    return a * a + b * b


def capsule(u: np.ndarray, v: np.ndarray, p0: Point, p1: Point, radius: float) -> np.ndarray:
    """The projected thickness (1 on the axis) of a bone-like capsule from p0 to p1, with a
    brighter cortex than its middle."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    rho2 = ((u - p0[0] - t * dx) ** 2 + (v - p0[1] - t * dy) ** 2) / (radius * radius)
    return shell(rho2)


def shell(rho2: np.ndarray, cortex: float = 0.35, marrow: float = 0.45) -> np.ndarray:
    """Projected thickness of a hollow cylinder of unit radius at squared radius rho2."""
    outer = np.sqrt(np.maximum(1.0 - rho2, 0.0))
    inner = np.sqrt(np.maximum((1.0 - cortex) ** 2 - rho2, 0.0))
    return outer - (1.0 - marrow) * inner


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), sigma)
    return noise / (noise.std() + 1e-9)


# --------------------------------------------------------------------------------------------
# Anatomy.


def sample_thorax(rng: np.random.Generator) -> Thorax:
    """A random chest: sizes, dome heights, heart and ribs vary from patient to patient."""
    width = rng.uniform(0.36, 0.43)
    right_dome = rng.uniform(0.08, 0.18)
    left_dome = right_dome + rng.uniform(0.01, 0.05)
    mediastinum = rng.uniform(0.045, 0.065)
    return Thorax(
        width=width,
        depth=rng.uniform(0.27, 0.33),
        apex=rng.uniform(-0.4, -0.34),
        domes=(right_dome, left_dome),
        sulcus=rng.uniform(0.08, 0.14),
        power=rng.uniform(2.4, 3.2),
        mediastinum=mediastinum,
        heart_center=(width * rng.uniform(0.12, 0.2), left_dome - rng.uniform(0.06, 0.1)),
        heart_axes=(width * rng.uniform(0.42, 0.52), rng.uniform(0.12, 0.15)),
        heart_tilt=math.radians(rng.uniform(-30.0, -10.0)),
        soft=rng.uniform(0.8, 1.0),
        rib_spacing=rng.uniform(0.05, 0.06),
        rib_phase=rng.uniform(0.0, 1.0),
        rib_drop=rng.uniform(0.1, 0.16),
        rib_width=rng.uniform(0.3, 0.4),
        clavicles=(rng.uniform(-0.34, -0.3), rng.uniform(-0.42, -0.36)),
    )


def lung_box(thorax: Thorax, side: int) -> tuple[Point, Point, float]:
    """(center, axes, lateral wall u) of one lung's superellipse in the frontal view.

    The superellipse reaches below the dome, whose curve cuts the lung's base: their crossing
    at the lateral wall is the costophrenic angle.
    """
    lateral = side * thorax.width
    medial = side * 0.8 * thorax.mediastinum
    dome = thorax.domes[0 if side < 0 else 1]
    bottom = dome + thorax.sulcus + 0.2
    center = ((lateral + medial) / 2, (thorax.apex + bottom) / 2)
    axes = (abs(lateral - medial) / 2, (bottom - thorax.apex) / 2)
    return center, axes, lateral


def dome_curve(thorax: Thorax, side: int, u: np.ndarray) -> np.ndarray:
    """`v` of a diaphragm dome across the frontal view: highest near the lung's middle,
    falling by `sulcus` towards the lateral wall (the costophrenic angle)."""
    (cu, _), (a, _), lateral = lung_box(thorax, side)
    top = cu - side * 0.15 * a
    dome = thorax.domes[0 if side < 0 else 1]
    return dome + thorax.sulcus * ((u - top) / (lateral - top)) ** 2


def frontal_air(thorax: Thorax, u: np.ndarray, v: np.ndarray, side: int) -> np.ndarray:
    """One lung's air thickness in [0, 1] in the frontal view (before the mediastinum)."""
    center, axes, _ = lung_box(thorax, side)
    inside = 1.0 - superellipse(u, v, center, axes, thorax.power)
    above = dome_curve(thorax, side, u) - v
    return np.clip(inside / 0.25, 0.0, 1.0) ** 0.5 * ramp(above, 0.015)


def mediastinum_mask(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1 over the mediastinum, heart and aortic knob (which hide the lungs behind them)."""
    band = ramp(thorax.mediastinum - np.abs(u - 0.01), 0.015)
    heart = ramp(
        1.0 - ellipse(u, v, thorax.heart_center, thorax.heart_axes, thorax.heart_tilt), 0.2
    )
    knob_center = (thorax.mediastinum + 0.01, thorax.apex + 0.2)
    knob = ramp(1.0 - ellipse(u, v, knob_center, (0.03, 0.03)), 0.4)
    return np.maximum(np.maximum(band, heart), knob)


def frontal_soft(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft-tissue thickness in [0, 1]: trunk, shoulders and neck."""
    body = 1.12 * thorax.width
    trunk = np.sqrt(np.clip(1.0 - (u / body) ** 2, 0.0, 1.0))
    shoulder_line = thorax.apex - 0.06 + 0.2 * (u / body) ** 4
    trunk = trunk * ramp(v - shoulder_line, 0.03)
    neck = np.sqrt(np.clip(1.0 - (u / 0.11) ** 2, 0.0, 1.0)) * 0.8
    arms = 0.7 * ramp(
        1.0 - ellipse(np.abs(u), v, (body + 0.05, thorax.apex + 0.02), (0.1, 0.16)), 0.3
    )
    return np.maximum(np.maximum(trunk, neck), arms)


def posterior_ribs(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Both sides' posterior ribs: arcs falling from the spine to the lateral wall."""
    a = np.abs(u)
    x = a / thorax.width
    w = v - thorax.rib_drop * (x * x - 0.3 * x)  # up a little from the spine, then down
    t = (w - thorax.apex) / thorax.rib_spacing - thorax.rib_phase
    across = (t - np.floor(t) - 0.5) * thorax.rib_spacing  # distance to the nearest rib's axis
    ribs = shell((across / (thorax.rib_width * thorax.rib_spacing / 2)) ** 2)
    count = 0.3 + 0.7 * ramp(thorax.domes[1] + 0.02 - w, 0.04)  # fainter over the abdomen
    count = count * ramp(w - thorax.apex + 0.03, 0.02) * ramp(thorax.domes[1] + 0.2 - w, 0.04)
    return ribs * count * ramp(a - 0.04, 0.02) * ramp(1.05 * thorax.width - a, 0.03)


def anterior_ribs(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fainter anterior ribs, falling from the lateral wall towards the sternum."""
    a = np.abs(u)
    w = v - 0.6 * thorax.rib_spacing * (1.0 - a / thorax.width) * 2.0
    t = (w - thorax.apex) / (1.2 * thorax.rib_spacing) - thorax.rib_phase
    across = (t - np.floor(t) - 0.5) * 1.2 * thorax.rib_spacing
    ribs = shell((across / (0.3 * thorax.rib_spacing)) ** 2)
    count = ramp(thorax.domes[0] - 0.05 - w, 0.02) * ramp(w - thorax.apex - 0.05, 0.02)
    return ribs * count * ramp(a - 0.1, 0.04) * ramp(thorax.width - a, 0.03)


def frontal_bones(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Density of the frontal view's bones: ribs, clavicles, spine, humeral heads."""
    bones = 0.28 * posterior_ribs(thorax, u, v) + 0.12 * anterior_ribs(thorax, u, v)
    medial, lateral = thorax.clavicles
    for side in (-1, 1):
        p0, p1 = (side * 0.05, medial), (side * 0.95 * thorax.width, lateral)
        bones = bones + 0.5 * capsule(u, v, p0, p1, 0.016)
        head = (side * (1.12 * thorax.width + 0.05), lateral + 0.02)
        bones = bones + 0.35 * shell(ellipse(u, v, head, (0.06, 0.06)), 0.25, 0.5)
    vertebra = np.cos(2 * math.pi * (v - thorax.apex) / 0.055) * 0.15 + 0.85
    spine = np.sqrt(np.clip(1.0 - (u / 0.035) ** 2, 0.0, 1.0)) * vertebra
    return bones + 0.2 * spine


def lateral_lung(thorax: Thorax) -> tuple[Point, Point]:
    """(center, axes) of the superimposed lungs in the lateral view."""
    bottom = max(thorax.domes) + thorax.sulcus + 0.12
    return (0.03, (thorax.apex + bottom) / 2), (0.85 * thorax.depth, (bottom - thorax.apex) / 2)


def lateral_dome(thorax: Thorax, side: int, u: np.ndarray) -> np.ndarray:
    """`v` of a dome in the lateral view: high in front, deepest at the posterior sulcus."""
    (cu, _), (a, _) = lateral_lung(thorax)
    top = cu - 0.3 * a
    dome = thorax.domes[0 if side < 0 else 1]
    fall = np.where(u > top, 1.6 * thorax.sulcus, 0.6 * thorax.sulcus)
    return dome + fall * ((u - top) / a) ** 2


def lateral_air(thorax: Thorax, u: np.ndarray, v: np.ndarray, side: int) -> np.ndarray:
    """One lung's air thickness in [0, 1] in the lateral view (the two lungs overlap)."""
    center, axes = lateral_lung(thorax)
    inside = 1.0 - superellipse(u, v, center, axes, thorax.power)
    above = lateral_dome(thorax, side, u) - v
    return np.clip(inside / 0.25, 0.0, 1.0) ** 0.5 * ramp(above, 0.015)


def lateral_heart(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1 over the heart in the lateral view: in front, resting on the domes."""
    (cu, _), (a, _) = lateral_lung(thorax)
    center = (cu - 0.4 * a, thorax.heart_center[1] + 0.02)
    axes = (0.55 * a, thorax.heart_axes[1] * 1.3)
    return ramp(1.0 - ellipse(u, v, center, axes, math.radians(-20)), 0.4)


def lateral_soft(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft-tissue thickness in [0, 1] in the lateral view: trunk, neck, raised arms."""
    body = 1.15 * thorax.depth
    trunk = np.sqrt(np.clip(1.0 - ((u - 0.02) / body) ** 2, 0.0, 1.0))
    trunk = trunk * ramp(v - thorax.apex + 0.1, 0.04)
    neck = np.sqrt(np.clip(1.0 - ((u - 0.05) / 0.13) ** 2, 0.0, 1.0))
    arms = ramp(1.0 - ellipse(u, v, (-0.02, thorax.apex - 0.08), (0.14, 0.25), 0.4), 0.3)
    return np.maximum(np.maximum(trunk, neck), 0.8 * arms)


def lateral_bones(thorax: Thorax, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Density of the lateral view's bones: thoracic spine behind, sternum in front, ribs."""
    (cu, _), (a, _) = lateral_lung(thorax)
    back = cu + a
    t = (v - thorax.apex) / 0.06
    disc = np.abs(t - np.floor(t) - 0.5) * 2  # 1 at a disc space, 0 mid-body
    body = ramp(0.045 - np.abs(u - back + 0.02), 0.01) * ramp(0.85 - disc, 0.1)
    sternum = ramp(0.012 - np.abs(u - (cu - 1.05 * a)), 0.008) * ramp(v - thorax.apex - 0.05, 0.02)
    sternum = sternum * ramp(thorax.heart_center[1] + 0.05 - v, 0.02)
    w = v + 0.5 * (u - back)  # ribs run obliquely down and forward from the spine
    r = (w - thorax.apex) / (0.9 * thorax.rib_spacing) - thorax.rib_phase
    across = (r - np.floor(r) - 0.5) * 0.9 * thorax.rib_spacing
    ribs = shell((across / (0.35 * thorax.rib_spacing)) ** 2) * ramp(u - cu + 0.2 * a, 0.1)
    ribs = ribs * ramp(back - u, 0.02) * ramp(max(thorax.domes) + 0.08 - v, 0.03)
    return 0.4 * body + 0.4 * sternum + 0.15 * ribs


# --------------------------------------------------------------------------------------------
# Findings.


def inside_frontal_lung(thorax: Thorax, side: int, point: Point, margin: float) -> bool:
    """Whether `point` lies in a lung's visible air, at least `margin` inside its outline."""
    u, v = np.array([point[0]]), np.array([point[1]])
    air = frontal_air(thorax, u, v, side) * (1.0 - mediastinum_mask(thorax, u, v))
    center, axes, _ = lung_box(thorax, side)
    grown = (axes[0] + margin, axes[1] + margin)
    deep = superellipse(u, v, center, grown, thorax.power)[0] < 1.0 - margin / min(axes)
    return bool(air[0] > 0.9 and deep and dome_curve(thorax, side, u)[0] - v[0] > margin)


def sample_patch(rng: np.random.Generator, thorax: Thorax) -> Patch:
    """A patch of consolidation centred well inside one lung's air."""
    side = int(rng.choice([-1, 1]))
    center, axes, _ = lung_box(thorax, side)
    for _ in range(100):
        point = (
            center[0] + rng.uniform(-1.0, 1.0) * axes[0],
            center[1] + rng.uniform(-1.0, 1.0) * axes[1],
        )
        if inside_frontal_lung(thorax, side, point, 0.03):
            break
    else:  # (never seen) the upper middle of the lung, clear of heart and dome
        point = (center[0], center[1] - 0.5 * axes[1])
    size = rng.uniform(0.045, 0.08)
    return Patch(
        side=side,
        center=point,
        depth=rng.uniform(-0.6, 0.6),
        axes=(size, size * rng.uniform(0.6, 1.0)),
        angle=rng.uniform(0.0, math.pi),
        strength=rng.uniform(0.75, 1.0),
    )


def sample_finding(rng: np.random.Generator, thorax: Thorax, kind: str) -> Finding | None:
    """The finding of a study of class `kind` (one of FINDINGS): None for "normal"."""
    if kind == "normal":
        return None
    if kind == "opacity":
        count = 1 if rng.random() < 0.6 else 2
        return Opacity(tuple(sample_patch(rng, thorax) for _ in range(count)))
    if kind == "effusion":
        sides = [(-1,), (1,), (-1, 1)][int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
        heights = tuple(float(rng.uniform(0.15, 0.4)) for _ in sides)
        return Effusion(sides=sides, heights=heights, rise=rng.uniform(0.3, 0.7))
    raise ValueError(f"unknown finding {kind!r}: expected one of {FINDINGS}")


def patch_fill(
    u: np.ndarray, v: np.ndarray, patch: Patch, center: Point, texture: np.ndarray
) -> np.ndarray:
    """The fraction of air that a patch of consolidation fills, a mottled Gaussian haze."""
    rho2 = ellipse(u, v, center, patch.axes, patch.angle)
    return patch.strength * np.exp(-0.5 * rho2**1.5) * texture


def fluid_fill(
    v: np.ndarray, t: np.ndarray, angle_v: float, height: float, rise: float
) -> np.ndarray:
    """The fraction of air that pleural fluid fills: 1 below its meniscus, which stands
    `height` above the costophrenic angle (at `v = angle_v`) at the chest wall (t = 1) and
    `rise * height` lower medially (t = 0)."""
    t = np.clip(t, 0.0, 1.0)
    top = angle_v - height + rise * height * (1.0 - t) ** 2
    return ramp(v - top - 0.015, 0.03) ** 0.7


# --------------------------------------------------------------------------------------------
# Views and exposure.


def sample_canvas(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) of a view: long side 96-144 px, aspect ratio 0.8-1, mostly portrait."""
    long_side = int(rng.integers(96, MAX_SIDE + 1))
    short_side = max(MIN_SIDE, round(long_side * rng.uniform(0.8, 1.0)))
    return (short_side, long_side) if rng.random() < 0.3 else (long_side, short_side)


def sample_pose(rng: np.random.Generator, height: int, width: int) -> Pose:
    """Zoom so that the chest (about 1 x 0.9 frame units) fills the canvas, a rotation of up
    to 6 degrees and a shift of up to 6% of the canvas."""
    zoom = rng.uniform(0.88, 1.05) * min(width / 1.0, height / 0.9)
    center = (
        width / 2 + rng.uniform(-0.06, 0.06) * width,
        height / 2 + rng.uniform(-0.06, 0.06) * height,
    )
    return Pose(zoom=zoom, angle=math.radians(rng.uniform(-6.0, 6.0)), center=center)


def frame_grid(pose: Pose, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The chest-frame coordinates (u, v) of every pixel centre, each (height, width)."""
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5 - pose.center[1]
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5 - pose.center[0]
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    u = (c * x + s * y) / pose.zoom + FRAME_CENTER[0]
    v = (-s * x + c * y) / pose.zoom + FRAME_CENTER[1]
    return u, v


def lung_textures(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(mottle, markings): the mottled texture of consolidation (in [0.6, 1]) and the faint
    vessel markings of every lung (in [0.9, 1], a factor on its air). Drawn for every view,
    whatever its finding, so that the random stream does not depend on the finding."""
    mottle = 0.8 + 0.2 * np.tanh(smooth_noise(rng, shape, 1.2))
    markings = 1.0 - 0.1 * np.clip(smooth_noise(rng, shape, 1.0), 0.0, None)
    return mottle, markings


def combine_fills(fills: list[np.ndarray], like: np.ndarray) -> np.ndarray:
    """The fraction of air that several fills together replace: 1 - prod(1 - fill)."""
    kept = np.ones_like(like)
    for fill in fills:
        kept = kept * (1.0 - fill)
    return 1.0 - kept


def frontal_fill(
    thorax: Thorax,
    finding: Finding | None,
    side: int,
    u: np.ndarray,
    v: np.ndarray,
    mottle: np.ndarray,
) -> np.ndarray:
    """The fraction of one lung's air that the finding replaces in the frontal view."""
    fills = []
    if isinstance(finding, Opacity):
        for patch in finding.patches:
            if patch.side == side:
                fills.append(patch_fill(u, v, patch, patch.center, mottle))
    elif isinstance(finding, Effusion) and side in finding.sides:
        height = finding.heights[finding.sides.index(side)]
        _, (a, _), lateral = lung_box(thorax, side)
        angle_v = thorax.domes[0 if side < 0 else 1] + thorax.sulcus
        t = 1.0 - (lateral - u) * side / (2 * a)  # 0 at the lung's medial edge, 1 at the wall
        fills.append(fluid_fill(v, t, angle_v, height, finding.rise))
    return combine_fills(fills, u)


def lateral_fill(
    thorax: Thorax,
    finding: Finding | None,
    side: int,
    u: np.ndarray,
    v: np.ndarray,
    mottle: np.ndarray,
) -> np.ndarray:
    """The fraction of one lung's air that the finding replaces in the lateral view: a patch
    at its height and its own depth, fluid in the posterior costophrenic sulcus."""
    (cu, _), (a, _) = lateral_lung(thorax)
    fills = []
    if isinstance(finding, Opacity):
        for patch in finding.patches:
            if patch.side == side:
                center = (cu + patch.depth * 0.8 * a, patch.center[1])
                fills.append(patch_fill(u, v, patch, center, mottle))
    elif isinstance(finding, Effusion) and side in finding.sides:
        height = finding.heights[finding.sides.index(side)]
        front = cu - 0.3 * a  # the dome's top
        angle_v = float(lateral_dome(thorax, side, np.array(cu + a)))  # the posterior sulcus
        t = (u - front) / (cu + a - front)  # 0 at the dome's top, 1 at the back
        fills.append(fluid_fill(v, t, angle_v, 1.3 * height, finding.rise))
    return combine_fills(fills, u)


def frontal_density(
    rng: np.random.Generator,
    thorax: Thorax,
    finding: Finding | None,
    u: np.ndarray,
    v: np.ndarray,
) -> np.ndarray:
    """The frontal (PA) view's density map: soft tissue minus lung air plus bones."""
    mottle, markings = lung_textures(rng, u.shape)
    hidden = 1.0 - mediastinum_mask(thorax, u, v)
    air = np.zeros_like(u)
    for side in (-1, 1):
        fill = frontal_fill(thorax, finding, side, u, v, mottle)
        air = air + frontal_air(thorax, u, v, side) * hidden * (1.0 - fill)
    soft = frontal_soft(thorax, u, v)
    return thorax.soft * soft * (1.0 - AIR * air * markings) + frontal_bones(thorax, u, v)


def lateral_density(
    rng: np.random.Generator,
    thorax: Thorax,
    finding: Finding | None,
    u: np.ndarray,
    v: np.ndarray,
) -> np.ndarray:
    """The lateral view's density map: the two lungs' air superimposed, heart in front."""
    mottle, markings = lung_textures(rng, u.shape)
    hidden = 1.0 - 0.7 * lateral_heart(thorax, u, v)
    air = np.zeros_like(u)
    for side in (-1, 1):
        fill = lateral_fill(thorax, finding, side, u, v, mottle)
        air = air + 0.5 * lateral_air(thorax, u, v, side) * hidden * (1.0 - fill)
    soft = lateral_soft(thorax, u, v)
    density = thorax.soft * 1.15 * soft * (1.0 - 1.2 * AIR * air * markings)
    return density + lateral_bones(thorax, u, v)


def set_mean(image: np.ndarray, target: float, iterations: int = 24) -> np.ndarray:
    """`image ** g` (values in [0, 1]) with the gamma g whose mean is `target`, found by
    bisection on log g: a monotone change of contrast that keeps black and white."""
    log = np.log(np.maximum(image, 1e-6))
    lo, hi = -4.0, 4.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if np.exp(math.exp(mid) * log).mean() > target:
            lo = mid
        else:
            hi = mid
    return np.exp(math.exp((lo + hi) / 2) * log)


def expose(rng: np.random.Generator, density: np.ndarray, mean: float) -> np.ndarray:
    """Turns a density map into an 8-bit radiograph whose mean intensity is `mean` * 255."""
    height, width = density.shape
    image = 1.0 - np.exp(-rng.uniform(1.6, 2.6) * density)
    ramp_axis = rng.integers(2)
    heel = np.linspace(-0.5, 0.5, (height, width)[ramp_axis], dtype=np.float32)
    heel = heel[:, None] if ramp_axis == 0 else heel[None, :]
    image = image * (1.0 + rng.uniform(-0.2, 0.2) * heel)
    image = set_mean(np.clip(ndimage.gaussian_filter(image, rng.uniform(0.4, 0.9)), 0, 1), mean)
    image = image + rng.uniform(0.008, 0.03) * rng.standard_normal(image.shape, np.float32)
    image = set_mean(np.clip(image, 0.0, 1.0), mean)  # again, after the noise: a small change
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def render_view(
    rng: np.random.Generator, thorax: Thorax, finding: Finding | None, lateral: bool
) -> np.ndarray:
    """Draws one view (frontal or lateral) of a chest, showing `finding` if given, as an
    (H, W) uint8 image whose mean intensity is drawn independently of the finding."""
    height, width = sample_canvas(rng)
    mean = rng.uniform(*MEAN_RANGE)
    u, v = frame_grid(sample_pose(rng, height, width), height, width)
    draw = lateral_density if lateral else frontal_density
    density = draw(rng, thorax, finding, u, v)
    if rng.random() < 0.7:  # a lead "L" or "R" marker in a corner
        density = density + render_density(draw_marker(rng, height, width), height, width)
    return expose(rng, density, mean)


def make_study(
    rng: np.random.Generator,
    thorax: Thorax,
    kind: str,
    num_views: int,
    visibility: float = 0.85,
) -> list[np.ndarray]:
    """The views of one study, frontal first then lateral (`num_views` 1 or 2); a study with a
    finding shows it in each view with probability `visibility`, and in at least one view."""
    if num_views not in (1, 2):
        raise ValueError(f"num_views {num_views}: expected 1 (frontal) or 2 (frontal, lateral)")
    finding = sample_finding(rng, thorax, kind)
    shows = rng.random(num_views) < visibility
    if finding is not None and not shows.any():
        shows[rng.integers(num_views)] = True
    view_rngs = rng.spawn(num_views)
    return [
        render_view(view_rng, thorax, finding if show else None, lateral=view == 1)
        for view, (view_rng, show) in enumerate(zip(view_rngs, shows, strict=True))
    ]
