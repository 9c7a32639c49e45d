"""Procedural street scenes for the synthetic Cityscapes and StreetHazards data sets.

A pinhole camera looks down a street; the layout (road, sidewalks, facades, trees, poles, vehicles, people, ...)
is placed in metres and painted back to front into an instance canvas, then rendered with per-class colour and
texture statistics that change from image to image (illumination, tint, shadows, fog, blur, noise). The painter
speaks of scene *elements* (``ELEMENTS``); each generator maps elements onto its data set's label values and
picks a ``SceneStyle``. Nothing here is tied to one data set, and the same ``rng`` gives the same scene.

Why hand-written: neither MONAI nor scipy draws street scenes; Pillow's ``ImageDraw`` rasterises the polygons
(deterministically) and numpy/scipy do the texturing.

- ``elements``: the vocabulary and value types (style, appearance, camera, street plan, painted scene);
- ``palette``: the elements' colours;
- ``canvas``: the drawing surface and its primitives, in pixels and in metres; ``render``;
- ``shading``: texture, patterns, light and sensor degradations, from parts to pixels;
- ``layout``: the street's fixed parts (ground, road, sidewalks, facades, backdrop);
- ``furniture`` and ``road_users``: one drawer per object (trees, poles, signs, lights; vehicles, people);
- ``objects``: where the objects stand;
- ``scene``: ``StreetScene``, all of the above for one image.
"""

from __future__ import annotations

from synthcp2d.data.scene_painter.elements import (
    ELEMENT_INDEX,
    ELEMENTS,
    Appearance,
    Camera,
    PaintedScene,
    SceneStyle,
    Side,
    Street,
)
from synthcp2d.data.scene_painter.scene import StreetScene

__all__ = [
    "ELEMENTS",
    "ELEMENT_INDEX",
    "Appearance",
    "Camera",
    "PaintedScene",
    "SceneStyle",
    "Side",
    "Street",
    "StreetScene",
]
