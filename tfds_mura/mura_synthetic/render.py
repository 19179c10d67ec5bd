"""Procedural radiograph-like views for `mura_synthetic`: pure numpy functions, no global state.

A study is drawn in three steps, every random choice coming from a `numpy.random.Generator`
that the caller seeds:

1. Anatomy (once per study, so that all views show the same limb): the bones and soft tissue of
   a body part as simple primitives, `Tube` (a capsule: a long bone, a phalanx, soft tissue or a
   metal rod) and `Blob` (an ellipsoid: an epiphysis, a carpal bone, a humeral head), in a unit
   "limb frame" where `u` runs across the limb and `v` along it, both roughly in [-0.5, 0.5].
2. View geometry (once per view): an affine map from the frame onto a canvas of random size and
   aspect ratio (zoom, rotation, flips, shift, and a squeeze across the limb that imitates
   oblique and lateral projections), the anomaly of an abnormal study when this view shows it
   (a displaced fracture or metal hardware), and lead markers ("L"/"R") that any view may carry.
3. Exposure: projected density -> attenuation -> window, gamma, collimation, heel-effect
   gradient, detector blur and noise -> an (H, W) uint8 image.

Global factors (exposure, collimation, limb size, markers) vary much more than the small local
anomaly changes an image's brightness, so a study's mean intensity says nothing of its label.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

Point = tuple[float, float]

BONE, SOFT, METAL = "bone", "soft", "metal"

MIN_SIDE, MAX_SIDE = 64, 160
"""Canvas sizes in pixels: the long side is drawn in [96, MAX_SIDE], the short one >= MIN_SIDE."""

METAL_DENSITY = 8.0
"""Density of metal (hardware, lead markers): saturates the detector."""


@dataclasses.dataclass(frozen=True)
class Cut:
    """A displaced fracture of a `Tube`: a gap across it, and its distal piece moved.

    Attributes:
      point: where the fracture line crosses the tube's axis.
      normal: unit normal of the fracture line, pointing towards the distal piece.
      gap: width of the fracture gap.
      shift: translation of the distal piece.
      angle: rotation of the distal piece about `point`, in radians (angulation).
    """

    point: Point
    normal: Point
    gap: float
    shift: Point
    angle: float


@dataclasses.dataclass(frozen=True)
class Tube:
    """A capsule from `p0` to `p1`, drawn as the X-ray projection of a (hollow) cylinder.

    Attributes:
      p0, p1: end points of the axis.
      radius: radius of the cylinder (and of the rounded ends).
      density: attenuation of the material.
      cortex: thickness of the cortex as a fraction of the radius; 1 is a solid cylinder.
      marrow: relative attenuation of the medullary canal (0 = hollow, 1 = solid).
      kind: `BONE`, `SOFT` (soft tissue) or `METAL`.
      cut: a fracture of this tube, if any.
      site: whether an anomaly may be placed on this tube.
    """

    p0: Point
    p1: Point
    radius: float
    density: float = 1.0
    cortex: float = 1.0
    marrow: float = 0.0
    kind: str = BONE
    cut: Cut | None = None
    site: bool = False


@dataclasses.dataclass(frozen=True)
class Blob:
    """An ellipse drawn as the X-ray projection of a (hollow) ellipsoid.

    Attributes:
      center: centre of the ellipse.
      axes: semi-axes (a, b); `a` lies along `direction`.
      direction: unit vector of the `a` axis.
      density, cortex, marrow, kind: as for `Tube`.
    """

    center: Point
    axes: Point
    direction: Point = (1.0, 0.0)
    density: float = 1.0
    cortex: float = 1.0
    marrow: float = 0.0
    kind: str = BONE


Shape = Tube | Blob


@dataclasses.dataclass(frozen=True)
class Affine:
    """The map `p -> matrix @ p + offset` from the limb frame to pixel coordinates (x, y)."""

    matrix: tuple[float, float, float, float]
    offset: Point

    @property
    def scale(self) -> float:
        """Length scale applied to radii: the square root of |det(matrix)|."""
        a, b, c, d = self.matrix
        return math.sqrt(abs(a * d - b * c))


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """The abnormality of a study, in limb-frame units, drawn into the views that show it.

    Attributes:
      kind: "fracture" or "hardware".
      bone: index of the site tube (among the anatomy's tubes with `site=True`).
      t: position along that tube, from `p0` (0) to `p1` (1).
      params: kind-specific numbers (see `draw_fracture` and `draw_hardware`).
    """

    kind: str
    bone: int
    t: float
    params: tuple[float, ...]


# --------------------------------------------------------------------------------------------
# Small geometry helpers.


def _add(p: Point, q: Point) -> Point:
    return (p[0] + q[0], p[1] + q[1])


def _scale(p: Point, k: float) -> Point:
    return (p[0] * k, p[1] * k)


def _lerp(p: Point, q: Point, t: float) -> Point:
    return (p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t)


def _unit(p: Point) -> Point:
    n = math.hypot(p[0], p[1]) or 1.0
    return (p[0] / n, p[1] / n)


def _rotate(p: Point, angle: float) -> Point:
    c, s = math.cos(angle), math.sin(angle)
    return (c * p[0] - s * p[1], s * p[0] + c * p[1])


def direction(angle_deg: float) -> Point:
    """The unit vector at `angle_deg` from the +v axis (towards +u): 0 points down the frame."""
    a = math.radians(angle_deg)
    return (math.sin(a), math.cos(a))


def map_point(t: Affine, p: Point) -> Point:
    """Applies the affine map to a point."""
    a, b, c, d = t.matrix
    return (a * p[0] + b * p[1] + t.offset[0], c * p[0] + d * p[1] + t.offset[1])


def _map_vector(t: Affine, v: Point) -> Point:
    a, b, c, d = t.matrix
    return (a * v[0] + b * v[1], c * v[0] + d * v[1])


def _map_normal(t: Affine, n: Point) -> Point:
    a, b, c, d = t.matrix  # inverse transpose, up to a positive factor when det > 0
    det = a * d - b * c
    return _unit(((d * n[0] - c * n[1]) * det, (-b * n[0] + a * n[1]) * det))


def transform_shape(shape: Shape, t: Affine) -> Shape:
    """Maps a shape from the limb frame to pixels (radii and lengths scale by `t.scale`)."""
    s = t.scale
    if isinstance(shape, Blob):
        return dataclasses.replace(
            shape,
            center=map_point(t, shape.center),
            axes=_scale(shape.axes, s),
            direction=_unit(_map_vector(t, shape.direction)),
        )
    cut = shape.cut
    if cut is not None:
        a, b, c, d = t.matrix
        cut = Cut(
            point=map_point(t, cut.point),
            normal=_map_normal(t, cut.normal),
            gap=cut.gap * s,
            shift=_map_vector(t, cut.shift),
            angle=cut.angle if a * d - b * c > 0 else -cut.angle,
        )
    return dataclasses.replace(
        shape,
        p0=map_point(t, shape.p0),
        p1=map_point(t, shape.p1),
        radius=shape.radius * s,
        cut=cut,
    )


def zoom_shapes(shapes: list[Shape], factor: float, center: Point) -> list[Shape]:
    """Scales shapes (positions and sizes) by `factor` about `center`."""
    offset = (center[0] * (1 - factor), center[1] * (1 - factor))
    zoom = Affine((factor, 0.0, 0.0, factor), offset)
    return [transform_shape(s, zoom) for s in shapes]


# --------------------------------------------------------------------------------------------
# Rendering primitives into a density map.


def _shell_profile(rho2: np.ndarray, cortex: float, marrow: float) -> np.ndarray:
    """Projected thickness of a unit hollow sphere/cylinder at squared normalised radius rho2.

    1 at the centre of a solid one; a hollow one shows a brighter rim (the cortex).
    """
    outer = np.sqrt(np.maximum(1.0 - rho2, 0.0))
    if cortex >= 1.0:
        return outer
    inner = np.sqrt(np.maximum((1.0 - cortex) ** 2 - rho2, 0.0))
    return outer - (1.0 - marrow) * inner


def _segment_rho2(x: np.ndarray, y: np.ndarray, p0: Point, p1: Point, r: float) -> np.ndarray:
    """Squared distance from (x, y) to the segment p0-p1, divided by r**2."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dx * dx + dy * dy or 1e-9
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / length2, 0.0, 1.0)
    ex, ey = x - (p0[0] + t * dx), y - (p0[1] + t * dy)
    return (ex * ex + ey * ey) / (r * r)


def tube_field(x: np.ndarray, y: np.ndarray, tube: Tube) -> np.ndarray:
    """The density of a tube sampled at pixel coordinates (x, y), fracture included."""
    r = max(tube.radius, 0.7)

    def profile(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        rho2 = _segment_rho2(px, py, tube.p0, tube.p1, r)
        return tube.density * _shell_profile(rho2, tube.cortex, tube.marrow)

    cut = tube.cut
    if cut is None:
        return profile(x, y)
    (cx, cy), (nx, ny), half = cut.point, cut.normal, cut.gap / 2
    proximal = np.clip(-((x - cx) * nx + (y - cy) * ny) - half + 0.5, 0.0, 1.0)
    # Pull the pixel back through the distal piece's displacement (rotation about the point).
    c, s = math.cos(-cut.angle), math.sin(-cut.angle)
    rx, ry = x - cx - cut.shift[0], y - cy - cut.shift[1]
    qx, qy = cx + c * rx - s * ry, cy + s * rx + c * ry
    distal = np.clip((qx - cx) * nx + (qy - cy) * ny - half + 0.5, 0.0, 1.0)
    return profile(x, y) * proximal + profile(qx, qy) * distal


def blob_field(x: np.ndarray, y: np.ndarray, blob: Blob) -> np.ndarray:
    """The density of an ellipsoid sampled at pixel coordinates (x, y)."""
    (cx, cy), (ux, uy) = blob.center, blob.direction
    a, b = max(blob.axes[0], 0.7), max(blob.axes[1], 0.7)
    du, dv = (x - cx) * ux + (y - cy) * uy, -(x - cx) * uy + (y - cy) * ux
    rho2 = (du / a) ** 2 + (dv / b) ** 2
    return blob.density * _shell_profile(rho2, blob.cortex, blob.marrow)


def _bounds(shape: Shape) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) enclosing the shape, its fracture displacement included."""
    if isinstance(shape, Blob):
        r = max(shape.axes) + 1
        return (shape.center[0] - r, shape.center[1] - r, shape.center[0] + r, shape.center[1] + r)
    r = max(shape.radius, 0.7) + 1
    if shape.cut is not None:
        length = math.dist(shape.p0, shape.p1)
        r += math.hypot(*shape.cut.shift) + length * abs(math.sin(shape.cut.angle))
    xs, ys = (shape.p0[0], shape.p1[0]), (shape.p0[1], shape.p1[1])
    return (min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r)


def render_density(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """Projects pixel-space shapes onto an (height, width) float32 density map.

    Soft tissue combines by maximum (one limb outline), bones by maximum plus half of their
    overlap (overlapping bones look denser), metal by maximum on top of everything.
    """
    soft = np.zeros((height, width), np.float32)
    bone_max = np.zeros_like(soft)
    bone_sum = np.zeros_like(soft)
    metal = np.zeros_like(soft)
    for shape in shapes:
        x0, y0, x1, y1 = _bounds(shape)
        c0, r0 = max(int(x0), 0), max(int(y0), 0)
        c1, r1 = min(int(math.ceil(x1)) + 1, width), min(int(math.ceil(y1)) + 1, height)
        if c0 >= c1 or r0 >= r1:
            continue
        y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        x = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
        field = blob_field(x, y, shape) if isinstance(shape, Blob) else tube_field(x, y, shape)
        window = (slice(r0, r1), slice(c0, c1))
        if shape.kind == SOFT:
            np.maximum(soft[window], field, out=soft[window])
        elif shape.kind == METAL:
            np.maximum(metal[window], field, out=metal[window])
        else:
            np.maximum(bone_max[window], field, out=bone_max[window])
            bone_sum[window] += field
    return soft + bone_max + 0.5 * (bone_sum - bone_max) + metal


# --------------------------------------------------------------------------------------------
# Anatomy: the bones of each body part in the limb frame.


def draw_bone(
    p0: Point,
    p1: Point,
    radius: float,
    *,
    heads: Point = (1.25, 1.25),
    site: bool = True,
    density: float = 1.0,
) -> list[Shape]:
    """A long bone: a hollow shaft from `p0` to `p1` with an epiphysis blob at each end.

    `heads` gives each epiphysis' half-width as a multiple of the shaft radius (0 = none).
    """
    axis = _unit((p1[0] - p0[0], p1[1] - p0[1]))
    across = (-axis[1], axis[0])
    shapes: list[Shape] = [
        Tube(p0, p1, radius, density, cortex=0.3, marrow=0.4, kind=BONE, site=site)
    ]
    for end, head in ((p0, heads[0]), (p1, heads[1])):
        if head > 0:
            axes = (head * radius, 0.85 * radius)
            shapes.append(Blob(end, axes, across, density, cortex=0.25, marrow=0.5))
    return shapes


def draw_chain(
    start: Point,
    angles: list[float],
    lengths: list[float],
    radii: list[float],
    *,
    joint: float = 0.25,
    site: tuple[bool, ...] = (),
) -> list[Shape]:
    """A chain of bones (a ray of the hand, a finger) separated by joint spaces.

    Bone `i` starts where bone `i - 1` ends (plus a joint space of `joint` radii), pointing at
    `angles[i]` degrees (see `direction`); `site[i]` marks bones that may carry an anomaly.
    """
    shapes: list[Shape] = []
    p = start
    for i, (angle, length, radius) in enumerate(zip(angles, lengths, radii, strict=True)):
        d = direction(angle)
        p0 = _add(p, _scale(d, joint * radius if i else 0.0))
        p1 = _add(p0, _scale(d, length))
        shapes += draw_bone(p0, p1, radius, heads=(1.3, 1.15), site=i < len(site) and site[i])
        p = p1
    return shapes


def _soft(p0: Point, p1: Point, radius: float, density: float) -> Tube:
    """Soft tissue: a solid capsule of low density."""
    return Tube(p0, p1, radius, density, kind=SOFT)


def _forearm(rng: np.random.Generator) -> list[Shape]:
    """Radius and ulna side by side, with the distal epiphyses and a few carpals."""
    r = rng.uniform(0.036, 0.05)
    gap = rng.uniform(0.06, 0.1)
    bow = rng.uniform(-0.02, 0.02)
    tissue = rng.uniform(0.15, 0.3)
    return [
        _soft((0.0, -0.8), (0.0, 0.8), rng.uniform(0.18, 0.24), tissue),
        _soft((0.0, -0.8), (0.0, -0.2), rng.uniform(0.22, 0.27), tissue),
        *draw_bone((-gap, -0.62), (-gap - bow, 0.42), r, heads=(0.0, 1.8)),
        *draw_bone((gap, -0.52), (gap + 0.01, 0.44), 0.85 * r, heads=(1.6, 1.1)),
        Blob((-gap - bow + 0.01, 0.56), (0.05, 0.04), density=0.9, cortex=0.3, marrow=0.5),
        Blob((0.02, 0.57), (0.04, 0.035), density=0.9, cortex=0.3, marrow=0.5),
    ]


def _humerus(rng: np.random.Generator) -> list[Shape]:
    """One thick shaft between the humeral head and the condyles."""
    r = rng.uniform(0.045, 0.06)
    tissue = rng.uniform(0.15, 0.3)
    top, bottom = rng.uniform(-0.5, -0.4), rng.uniform(0.4, 0.5)
    return [
        _soft((0.0, -0.8), (0.0, 0.8), rng.uniform(0.22, 0.3), tissue),
        *draw_bone((0.0, top), (0.0, bottom), r, heads=(0.0, 2.2), density=1.05),
        Blob((0.03, top - 0.02), (2.1 * r, 2.0 * r), density=1.0, cortex=0.2, marrow=0.5),
    ]


def _elbow(rng: np.random.Generator) -> list[Shape]:
    """Distal humerus meeting radius and ulna at a random flexion, with the olecranon."""
    r = rng.uniform(0.045, 0.06)
    flex = rng.uniform(-10.0, 70.0)
    tissue = rng.uniform(0.15, 0.3)
    pivot = (0.0, 0.02)

    def forearm(p: Point) -> Point:
        return _add(pivot, _rotate((p[0] - pivot[0], p[1] - pivot[1]), -math.radians(flex)))

    return [
        _soft((0.0, -0.8), pivot, rng.uniform(0.18, 0.23), tissue),
        _soft(pivot, forearm((0.0, 0.8)), rng.uniform(0.16, 0.2), tissue),
        *draw_bone((0.0, -0.7), (0.0, -0.04), r, heads=(0.0, 0.0)),
        Blob((0.0, 0.0), (2.3 * r, 1.1 * r), density=1.0, cortex=0.25, marrow=0.5),
        *draw_bone(forearm((-0.05, 0.09)), forearm((-0.09, 0.7)), 0.75 * r, heads=(1.5, 0)),
        *draw_bone(forearm((0.045, 0.06)), forearm((0.07, 0.7)), 0.8 * r, heads=(1.4, 0)),
        Blob(forearm((0.06, 0.0)), (1.1 * r, 1.4 * r), density=0.9, cortex=0.3, marrow=0.5),
    ]


def _shoulder(rng: np.random.Generator) -> list[Shape]:
    """Humeral head and shaft, glenoid, faint scapula, clavicle and acromion."""
    r = rng.uniform(0.05, 0.065)
    head = rng.uniform(0.12, 0.15)
    tissue = rng.uniform(0.15, 0.3)
    tilt = rng.uniform(-10.0, 10.0)
    neck = (0.03, -0.02)
    return [
        Blob((-0.05, 0.0), (0.6, 0.55), density=tissue, kind=SOFT),
        Blob((-0.3, 0.1), (0.14, 0.3), _unit((1.0, -0.3)), 0.45, cortex=0.15, marrow=0.6),
        Blob((-0.16, -0.06), (0.04, 0.12), density=0.9, cortex=0.3, marrow=0.5),
        Blob((0.0, -0.08), (head, head), density=1.0, cortex=0.15, marrow=0.55),
        *draw_bone(neck, _add(neck, _scale(direction(tilt), 0.7)), r, heads=(0, 0)),
        *draw_bone((-0.55, -0.38), (0.12, -0.32), 0.6 * r, heads=(0.0, 1.2)),
        Blob((0.05, -0.24), (0.09, 0.035), _unit((1.0, 0.15)), 0.9, cortex=0.3, marrow=0.5),
    ]


def _wrist(rng: np.random.Generator) -> list[Shape]:
    """Distal radius and ulna, two rows of carpals, metacarpal bases and the thumb."""
    r = rng.uniform(0.05, 0.065)
    tissue = rng.uniform(0.15, 0.3)
    carpal = rng.uniform(0.028, 0.036)
    shapes: list[Shape] = [
        _soft((0.0, 0.8), (0.0, -0.35), rng.uniform(0.18, 0.22), tissue),
        _soft((0.0, -0.35), (0.0, -0.95), rng.uniform(0.22, 0.28), tissue),
        *draw_bone((-0.07, 0.7), (-0.07, -0.05), r, heads=(0.0, 1.7)),
        *draw_bone((0.1, 0.7), (0.1, -0.03), 0.65 * r, heads=(0.0, 1.3)),
    ]
    for row, v in enumerate((-0.15, -0.25)):
        for i in range(4):
            u = -0.105 + 0.07 * i + 0.01 * row
            axes = (carpal, 0.85 * carpal)
            shapes.append(Blob((u, v), axes, density=0.85, cortex=0.3, marrow=0.5))
    # Metacarpals run off the film: no anomaly on them, the wrist's are radius and ulna.
    for i, u in enumerate((-0.09, -0.03, 0.025, 0.075)):
        p0 = (u, -0.33)
        p1 = _add(p0, _scale(direction(180 + 4 * (i - 1.5)), 0.55))
        shapes += draw_bone(p0, p1, 0.45 * r, site=False)
    thumb = (-0.13, -0.29)
    shapes += draw_bone(thumb, _add(thumb, _scale(direction(180 + 35), 0.3)), 0.45 * r, site=False)
    return shapes


def _hand(rng: np.random.Generator) -> list[Shape]:
    """PA hand: carpals, four fanned rays of metacarpal and phalanges, and the thumb."""
    r = rng.uniform(0.024, 0.03)
    tissue = rng.uniform(0.15, 0.3)
    spread = rng.uniform(6.0, 12.0)  # degrees between neighbouring rays
    shapes: list[Shape] = [
        _soft((0.0, 0.6), (0.0, 0.32), 0.14, tissue),
        Blob((0.0, 0.12), (0.18, 0.17), density=tissue, kind=SOFT),
    ]
    for u in (-0.09, -0.03, 0.03, 0.09):
        shapes.append(Blob((u, 0.3), (0.028, 0.024), density=0.85, cortex=0.3, marrow=0.5))
        shapes.append(Blob((u * 0.9, 0.36), (0.026, 0.022), density=0.85, cortex=0.3, marrow=0.5))
    shapes += draw_bone((-0.05, 0.6), (-0.05, 0.43), 2.2 * r, heads=(0.0, 1.4), site=False)
    shapes += draw_bone((0.07, 0.6), (0.07, 0.44), 1.5 * r, heads=(0.0, 1.2), site=False)
    rays = [
        (0.27, 0.17, 0.1, 0.07),
        (0.28, 0.19, 0.12, 0.07),
        (0.26, 0.17, 0.11, 0.07),
        (0.24, 0.14, 0.09, 0.06),
    ]
    radii = [1.05 * r, 0.95 * r, 0.8 * r, 0.7 * r]
    for i, (u, ray) in enumerate(zip((-0.075, -0.025, 0.025, 0.075), rays, strict=True)):
        angle = 180 - spread * (i - 1.5) + rng.uniform(-3, 3)
        base = (u, 0.23)
        tissue_start = _add(base, _scale(direction(angle), 0.2))
        tissue_end = _add(base, _scale(direction(angle), sum(ray) + 0.05))
        shapes.append(_soft(tissue_start, tissue_end, 1.9 * r, tissue))
        shapes += draw_chain(base, [angle] * 4, list(ray), radii, site=(True, True))
    thumb = (-0.12, 0.25)
    angle = 180 + 40 + rng.uniform(-8, 8)
    shapes.append(_soft(thumb, _add(thumb, _scale(direction(angle), 0.4)), 2.2 * r, tissue))
    shapes += draw_chain(thumb, [angle] * 3, [0.18, 0.12, 0.08], [1.1 * r, r, 0.85 * r])
    # Hand films are collimated to the hand: zoom in on the metacarpals, fingertips may leave.
    return zoom_shapes(shapes, 1.3, (0.0, 0.1))


def _finger(rng: np.random.Generator) -> list[Shape]:
    """One slightly flexed finger: metacarpal head and three phalanges in soft tissue."""
    r = rng.uniform(0.05, 0.065)
    tissue = rng.uniform(0.15, 0.3)
    flex = rng.uniform(0.0, 12.0, size=3) * rng.choice([-1.0, 1.0])
    angles = [180.0, 180.0 + flex[0], 180.0 + flex[0] + flex[1], 180.0 + flex[:3].sum()]
    lengths = [0.36, rng.uniform(0.27, 0.32), rng.uniform(0.17, 0.21), rng.uniform(0.1, 0.13)]
    radii = [1.1 * r, r, 0.85 * r, 0.75 * r]
    start = (0.0, 0.72)
    bones = draw_chain(start, angles, lengths, radii, joint=0.35, site=(True, True, True))
    tubes = [s for s in bones if isinstance(s, Tube)]
    outline = [_soft(t.p0, t.p1, 2.0 * r, tissue) for t in tubes]
    return [*outline, *bones]


ANATOMY: dict[str, Callable[[np.random.Generator], list[Shape]]] = {
    "XR_ELBOW": _elbow,
    "XR_FINGER": _finger,
    "XR_FOREARM": _forearm,
    "XR_HAND": _hand,
    "XR_HUMERUS": _humerus,
    "XR_SHOULDER": _shoulder,
    "XR_WRIST": _wrist,
}


def draw_anatomy(rng: np.random.Generator, body_part: str) -> list[Shape]:
    """The bones and soft tissue of `body_part` (e.g. "XR_WRIST") in the limb frame."""
    return ANATOMY[body_part](rng)


def site_tubes(anatomy: list[Shape]) -> list[Tube]:
    """The tubes of an anatomy on which an anomaly may be drawn."""
    return [s for s in anatomy if isinstance(s, Tube) and s.site]


# --------------------------------------------------------------------------------------------
# Anomalies.


def sample_anomaly(rng: np.random.Generator, anatomy: list[Shape]) -> Anomaly:
    """Picks a fracture or hardware on a site bone, near enough the frame's centre to be seen."""
    tubes = site_tubes(anatomy)
    candidates = []
    for i, tube in enumerate(tubes):
        for t in np.linspace(0.25, 0.75, 11):
            u, v = _lerp(tube.p0, tube.p1, float(t))
            if abs(u) <= 0.28 and abs(v) <= 0.38:
                candidates.append((i, float(t)))
    if not candidates:  # cannot happen with the anatomies above; keep a sensible fallback
        candidates = [(i, 0.5) for i in range(len(tubes))]
    bone, t = candidates[rng.integers(len(candidates))]
    t = float(np.clip(t + rng.uniform(-0.03, 0.03), 0.2, 0.8))
    if rng.random() < 0.55:
        fragments = int(rng.integers(2, 5))
        params = (
            rng.uniform(-35.0, 35.0),  # obliquity of the fracture line, degrees
            rng.uniform(1.5, 2.4) * rng.choice([-1.0, 1.0]),  # lateral shift, in radii
            rng.uniform(-0.3, 0.3),  # axial shift, in radii
            rng.uniform(15.0, 35.0) * rng.choice([-1.0, 1.0]),  # angulation, degrees
            # comminution: (direction in degrees, distance in radii) of each loose fragment
            *(x for _ in range(fragments) for x in (rng.uniform(0, 360), rng.uniform(1.3, 2.2))),
        )
        return Anomaly("fracture", bone, t, params)
    params = (
        float(rng.integers(3)),  # style: 0 plate and screws, 1 intramedullary nail, 2 wires
        rng.choice([-1.0, 1.0]),  # side of the plate
        rng.uniform(0.3, 0.45),  # length, as a fraction of the bone
        float(rng.integers(3, 6)),  # number of screws
    )
    return Anomaly("hardware", bone, t, params)


def draw_fracture(tube: Tube, t: float, params: tuple[float, ...]) -> list[Shape]:
    """The tube broken at `t`: a gap across it, the distal piece shifted and angulated, and
    loose fragments around the break.

    Sizes have floors in frame units so that a fracture of a thin bone stays visible once the
    image is shrunk to 64 px.
    """
    oblique, lateral, axial, angulation, *fragments = params
    axis = _unit((tube.p1[0] - tube.p0[0], tube.p1[1] - tube.p0[1]))
    across = (-axis[1], axis[0])
    r = max(tube.radius, 0.04)
    point = _lerp(tube.p0, tube.p1, t)
    normal = _rotate(axis, math.radians(oblique))
    shift = _add(_scale(across, lateral * r), _scale(axis, axial * r))
    cut = Cut(point, normal, max(0.7 * tube.radius, 0.06), shift, math.radians(angulation))
    shapes: list[Shape] = [dataclasses.replace(tube, cut=cut)]
    for angle, distance in zip(fragments[::2], fragments[1::2], strict=True):
        d = _rotate(across, math.radians(angle))
        center = _add(point, _scale(d, distance * r))
        shapes.append(Blob(center, (0.6 * r, 0.35 * r), _rotate(d, 1.0), 1.1, cortex=1.0))
    return shapes


def _metal(p0: Point, p1: Point, radius: float) -> Tube:
    """A metal rod (plate seen edge-on, screw, nail, wire) from `p0` to `p1`."""
    return Tube(p0, p1, radius, METAL_DENSITY, kind=METAL)


def _metal_across(center: Point, d: Point, reach: float, radius: float) -> Tube:
    """A metal rod through `center` along the unit vector `d`, `reach` to either side."""
    return _metal(_add(center, _scale(d, reach)), _add(center, _scale(d, -reach)), radius)


def draw_hardware(tube: Tube, t: float, params: tuple[float, ...]) -> list[Shape]:
    """Metal on the tube at `t`: a plate with screws, an intramedullary nail, or crossed wires.

    Sizes have floors in frame units so that hardware on a thin bone stays visible at 64 px.
    """
    style, side, fraction, screws = params
    axis = (tube.p1[0] - tube.p0[0], tube.p1[1] - tube.p0[1])
    length = math.hypot(*axis)
    axis = _unit(axis)
    across = (-axis[1], axis[0])
    r = tube.radius
    point = _lerp(tube.p0, tube.p1, t)
    half = _scale(axis, fraction * length / 2)
    thin = max(0.25 * r, 0.013)
    metal: list[Tube] = []
    if style == 0:  # a plate on one side, screws across the bone
        width = max(0.4 * r, 0.024)
        plate = _add(point, _scale(across, side * (r + width)))
        metal.append(_metal(_add(plate, _scale(half, -1.0)), _add(plate, half), width))
        for k in np.linspace(-0.8, 0.8, int(screws)):
            base = _add(point, _scale(half, float(k)))
            head = _add(base, _scale(across, side * max(1.8 * r, r + 0.06)))
            tip = _add(base, _scale(across, -side * max(1.3 * r, r + 0.03)))
            metal.append(_metal(head, tip, thin))
    elif style == 1:  # a nail down the medullary canal, locked by a screw at each end
        p0, p1 = _add(point, _scale(half, -1.6)), _add(point, _scale(half, 1.6))
        metal.append(_metal(p0, p1, max(0.45 * r, 0.02)))
        reach = max(1.6 * r, r + 0.06)
        for end in (p0, p1):
            metal.append(_metal_across(end, across, reach, thin))
    else:  # two or three crossed Kirschner wires
        reach = max(2.2 * r, 0.12)
        for angle in (-35.0, 35.0, 60.0)[: min(int(screws), 3)]:
            metal.append(_metal_across(point, _rotate(across, math.radians(angle)), reach, thin))
    return [tube, *metal]


def apply_anomaly(anatomy: list[Shape], anomaly: Anomaly) -> list[Shape]:
    """The anatomy with the anomaly drawn on its site tube."""
    target = site_tubes(anatomy)[anomaly.bone]
    draw = draw_fracture if anomaly.kind == "fracture" else draw_hardware
    shapes: list[Shape] = []
    for shape in anatomy:
        shapes += draw(shape, anomaly.t, anomaly.params) if shape is target else [shape]
    if anomaly.kind == "fracture":  # soft-tissue swelling (haematoma) around the break
        tissue = max(s.density for s in anatomy if s.kind == SOFT)
        size = max(4.0 * target.radius, 0.12)
        site = _lerp(target.p0, target.p1, anomaly.t)
        shapes.append(Blob(site, (size, 0.8 * size), density=2.2 * tissue, kind=SOFT))
    return shapes


def anomaly_site(anatomy: list[Shape], anomaly: Anomaly) -> Point:
    """Where the anomaly lies in the limb frame."""
    tube = site_tubes(anatomy)[anomaly.bone]
    return _lerp(tube.p0, tube.p1, anomaly.t)


# --------------------------------------------------------------------------------------------
# View geometry, markers and exposure.


def sample_canvas(rng: np.random.Generator, body_part: str) -> tuple[int, int]:
    """(height, width) of a view: long side 96-160 px, aspect ratio 0.6-1."""
    shoulder = body_part == "XR_SHOULDER"
    long_side = int(rng.integers(96, MAX_SIDE + 1))
    short_side = max(MIN_SIDE, round(long_side * rng.uniform(0.75 if shoulder else 0.6, 1.0)))
    landscape = rng.random() < (0.6 if shoulder else 0.2)
    return (short_side, long_side) if landscape else (long_side, short_side)


def sample_view(rng: np.random.Generator, height: int, width: int, along: bool = True) -> Affine:
    """A random map from the limb frame onto a canvas.

    The limb runs along the canvas' long side if `along`, else roughly top to bottom.
    """
    long_side = max(height, width)
    zoom = rng.uniform(0.8, 1.15) * long_side
    squeeze = rng.uniform(0.7, 1.0)  # oblique/lateral projections bring bones together
    angle = math.radians(rng.uniform(-15.0, 15.0) + (90.0 if along and width > height else 0.0))
    flip_u = rng.choice([-1.0, 1.0])
    flip_v = rng.choice([-1.0, 1.0])
    c, s = math.cos(angle), math.sin(angle)
    # matrix = zoom * R(angle) @ diag(flip_u * squeeze, flip_v)
    matrix = (
        zoom * c * flip_u * squeeze,
        -zoom * s * flip_v,
        zoom * s * flip_u * squeeze,
        zoom * c * flip_v,
    )
    offset = (
        width / 2 + rng.uniform(-0.08, 0.08) * width,
        height / 2 + rng.uniform(-0.08, 0.08) * height,
    )
    return Affine(matrix, offset)


def _inside(p: Point, height: int, width: int, margin: float) -> bool:
    return margin <= p[0] <= width - margin and margin <= p[1] <= height - margin


def draw_marker(rng: np.random.Generator, height: int, width: int) -> list[Shape]:
    """A lead side marker, "L" or "R" (sometimes boxed), in a random corner, in pixels."""
    size = rng.uniform(0.08, 0.12) * min(height, width)
    stroke = max(0.07 * size, 0.7)
    corner_x = rng.choice([0.08 * width, width - 0.08 * width - 0.6 * size])
    corner_y = rng.choice([0.08 * height, height - 0.08 * height - size])
    x, y = float(corner_x), float(corner_y)
    if rng.random() < 0.5:
        strokes = [((x, y), (x, y + size)), ((x, y + size), (x + 0.6 * size, y + size))]
    else:
        bowl = [(0.0, 0.0), (0.4, 0.0), (0.55, 0.12), (0.55, 0.33), (0.4, 0.45), (0.0, 0.45)]
        pts = [(x + size * a, y + size * b) for a, b in bowl]
        strokes = [((x, y), (x, y + size)), *zip(pts[:-1], pts[1:], strict=True)]
        strokes.append(((x + 0.2 * size, y + 0.45 * size), (x + 0.6 * size, y + size)))
    if rng.random() < 0.3:
        corners = [(-0.3, -0.3), (0.9, -0.3), (0.9, 1.3), (-0.3, 1.3)]
        box = [(x + size * a, y + size * b) for a, b in corners]
        strokes += list(zip(box, box[1:] + box[:1], strict=True))
    return [Tube(p, q, stroke, METAL_DENSITY, kind=METAL) for p, q in strokes]


def collimate(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Sometimes adds collimator shutters: bright (unexposed) bands along some borders."""
    image = image.copy()
    if rng.random() < 0.35:
        level = rng.uniform(0.55, 0.95)
        for axis, end in ((0, 0), (0, 1), (1, 0), (1, 1)):
            if rng.random() < 0.5:
                band = max(1, int(rng.uniform(0.04, 0.18) * image.shape[axis]))
                index = [slice(None), slice(None)]
                index[axis] = slice(0, band) if end == 0 else slice(-band, None)
                image[tuple(index)] = level
    return image


def expose(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Turns a density map into an 8-bit radiograph with random exposure and detector effects."""
    height, width = density.shape
    attenuation = 1.0 - np.exp(-rng.uniform(1.2, 2.2) * density)
    black, white = rng.uniform(0.0, 0.15), rng.uniform(0.7, 1.0)
    gamma = math.exp(rng.uniform(math.log(0.65), math.log(1.5)))
    image = black + (white - black) * attenuation**gamma
    image = collimate(rng, image)
    ramp_axis = rng.integers(2)
    ramp = np.linspace(-0.5, 0.5, (height, width)[ramp_axis], dtype=np.float32)
    ramp = ramp[:, None] if ramp_axis == 0 else ramp[None, :]
    image = image * (1.0 + rng.uniform(-0.25, 0.25) * ramp)
    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 0.9))
    image = image + rng.normal(0.0, rng.uniform(0.006, 0.03), image.shape)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def render_view(
    rng: np.random.Generator,
    body_part: str,
    anatomy: list[Shape],
    anomaly: Anomaly | None = None,
) -> np.ndarray:
    """Draws one view of a limb, showing `anomaly` if given, as an (H, W) uint8 image."""
    height, width = sample_canvas(rng, body_part)
    shapes = anatomy
    along = body_part != "XR_SHOULDER"
    view = sample_view(rng, height, width, along)
    if anomaly is not None:
        site = anomaly_site(anatomy, anomaly)
        margin = 0.12 * min(height, width)
        for _ in range(8):  # keep the anomaly well inside the image
            if _inside(map_point(view, site), height, width, margin):
                break
            view = sample_view(rng, height, width, along)
        else:  # centre it
            x, y = map_point(view, site)
            offset = (view.offset[0] + width / 2 - x, view.offset[1] + height / 2 - y)
            view = Affine(view.matrix, offset)
        shapes = apply_anomaly(anatomy, anomaly)
    pixels = [transform_shape(s, view) for s in shapes]
    if rng.random() < 0.75:
        pixels += draw_marker(rng, height, width)
    return expose(rng, render_density(pixels, height, width))


def make_study(
    rng: np.random.Generator,
    body_part: str,
    abnormal: bool,
    num_views: int,
    visibility: float = 0.8,
) -> list[np.ndarray]:
    """The views of one study; an abnormal one shows its anomaly in each view with probability
    `visibility`, and in at least one view."""
    anatomy = draw_anatomy(rng, body_part)
    anomaly = sample_anomaly(rng, anatomy) if abnormal else None
    shows = rng.random(num_views) < visibility
    if abnormal and not shows.any():
        shows[rng.integers(num_views)] = True
    view_rngs = rng.spawn(num_views)
    return [
        render_view(view_rng, body_part, anatomy, anomaly if show else None)
        for view_rng, show in zip(view_rngs, shows, strict=True)
    ]
