"""``StreetScene``: a ``SceneCanvas`` with a random street laid out (``layout``) and populated (``objects``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthcp2d.data.scene_painter.canvas import SceneCanvas
from synthcp2d.data.scene_painter.elements import SceneStyle
from synthcp2d.data.scene_painter.layout import lay_out_street
from synthcp2d.data.scene_painter.objects import place_objects

__all__ = ["StreetScene"]


class StreetScene(SceneCanvas):
    """One random street scene: build the layout on construction, add objects, then ``render()``.

    The arguments are ``SceneCanvas``'s; the same ``rng`` state gives the same scene.

    Attributes:
        street: the street's plan (road edges, depth, the two sides), to place more objects on (e.g. anomalies).
    """

    def __init__(
        self,
        rng: np.random.Generator,
        size: tuple[int, int],
        style: SceneStyle | None = None,
        force: Sequence[str] = (),
        allowed: Sequence[str] | None = None,
    ) -> None:
        super().__init__(rng, size, style, force, allowed)
        self.street = lay_out_street(self)
        place_objects(self, self.street)
