"""The painter's vocabulary (scene ``ELEMENTS``) and the value types its modules pass around: a data set's
``SceneStyle``, a part's ``Appearance``, the pinhole ``Camera``, the street's plan (``Street``, ``Side``) and the
rendered ``PaintedScene``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ELEMENTS",
    "ELEMENT_INDEX",
    "FIELDS",
    "Appearance",
    "Box",
    "Camera",
    "PaintedScene",
    "Point",
    "SceneStyle",
    "Side",
    "Street",
]

# The painter's vocabulary. Generators map each element to a label value (several elements may share one).
ELEMENTS: tuple[str, ...] = (
    "sky",
    "ground",
    "terrain",
    "sidewalk",
    "road",
    "road_line",
    "parking",
    "rail_track",
    "building",
    "wall",
    "fence",
    "guard_rail",
    "vegetation",
    "pole",
    "traffic_light",
    "traffic_sign",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "static",
    "ego_vehicle",
    "anomaly",
)
ELEMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(ELEMENTS)}

# Texture fields an appearance mixes (weights in ``Appearance``), in this order.
FIELDS = ("low", "mid", "high", "windows", "stripes", "tiles", "vgrad")

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # a billboard's screen box (x0, y_top, x1, y_bottom)


@dataclass(frozen=True)
class SceneStyle:
    """Probabilities and ranges that distinguish one synthetic data set's look from another's.

    Args:
        p_ego_vehicle: share of images showing the recording car's bonnet at the bottom.
        p_train: share of images with a tram crossing the street.
        p_large_vehicle: share of images with a truck or bus.
        p_two_wheeler: share of images with a rider (bicycle or motorcycle).
        p_lane_markings: share of images with painted lane markings.
        p_parking: share of images with a parking strip beside the road.
        p_fog: share of images with haze towards the horizon.
        p_sunny: share of images with hard shadows (otherwise overcast).
        illumination: range of the global gain.
        noise_std: range of the per-image Gaussian pixel noise (fraction of full scale).
        blur_sigma: range of the per-image Gaussian blur, in pixels at width 256.
        terrain_share: chance that the open ground beyond the facades is terrain (else "ground").
    """

    p_ego_vehicle: float = 0.5
    p_train: float = 0.06
    p_large_vehicle: float = 0.35
    p_two_wheeler: float = 0.5
    p_lane_markings: float = 0.6
    p_parking: float = 0.25
    p_fog: float = 0.3
    p_sunny: float = 0.6
    illumination: tuple[float, float] = (0.55, 1.3)
    noise_std: tuple[float, float] = (0.008, 0.045)
    blur_sigma: tuple[float, float] = (0.0, 0.9)
    terrain_share: float = 0.6


@dataclass
class Appearance:
    """How one painted part looks: a base colour modulated by texture fields.

    Args:
        color: base RGB in [0, 1], shape (3,).
        low, mid, high: amplitudes of smooth noise at large, medium and pixel scale.
        windows: amplitude of the facade-window grid (dark windows).
        stripes: amplitude of vertical bars (fences, rails).
        tiles: amplitude of paving joints.
        vgrad: amplitude of a vertical gradient (sky brightening towards the horizon).
        pattern: optional two-colour geometric pattern ``(kind, color2, period_px, angle_rad)`` with kind in
            ``"checker" | "stripes" | "dots" | "rings" | "rainbow"``; no street element uses one (anomalies do).
    """

    color: np.ndarray
    low: float = 0.05
    mid: float = 0.04
    high: float = 0.03
    windows: float = 0.0
    stripes: float = 0.0
    tiles: float = 0.0
    vgrad: float = 0.0
    pattern: tuple[str, np.ndarray, float, float] | None = None

    def weights(self) -> list[float]:
        return [getattr(self, name) for name in FIELDS]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at ``cam_height`` metres, looking along +Z; X to the right, Y up, all in metres."""

    width: int
    height: int
    focal: float
    cx: float
    horizon: float
    cam_height: float

    def x(self, X: float, Z: float) -> float:
        return self.cx + self.focal * X / Z

    def y(self, Y: float, Z: float) -> float:
        return self.horizon + self.focal * (self.cam_height - Y) / Z

    @property
    def z_bottom(self) -> float:
        """Depth of the ground seen at the image's bottom row."""
        return self.focal * self.cam_height / (self.height - self.horizon)

    def scale(self, Z: float) -> float:
        """Pixels per metre at depth ``Z``."""
        return self.focal / Z


@dataclass
class PaintedScene:
    """A rendered scene.

    Attributes:
        image: uint8 RGB, shape (H, W, 3).
        elements: uint8 element index (into ``ELEMENTS``) per pixel, shape (H, W).
        objects: int32 object id per pixel (0 = stuff, no object), shape (H, W); the parts of one car share one id.
    """

    image: np.ndarray
    elements: np.ndarray
    objects: np.ndarray


@dataclass
class Side:
    """One side of the street, from the curb outwards: sidewalk, then a terrain verge, then the property line."""

    sign: int  # -1 left, +1 right
    edge: float  # X of the curb
    sidewalk: float  # sidewalk width (m)
    verge: float  # terrain strip width behind the sidewalk (m)
    front: float = field(init=False)  # X of the property line

    def __post_init__(self) -> None:
        self.front = self.edge + self.sign * (self.sidewalk + self.verge)

    def across(self, distance: float) -> float:
        """X at ``distance`` metres from the curb, away from the road (negative goes into the road)."""
        return self.edge + self.sign * distance


@dataclass(frozen=True)
class Street:
    """The street's plan in metres: the road between ``road_left`` and ``road_right`` (X), ending at depth
    ``z_end`` (a backdrop there, or open to the horizon), and its two ``sides`` (left, right)."""

    road_left: float
    road_right: float
    z_end: float
    sides: tuple[Side, Side]
