"""Explanations: why a model answered what it did (Captum attributions, a PNG overlay).

The attributions are computed in ``flywheel.explain.attributions``; the service
(``flywheel.explain.service``) caches them per input, model version and target.
"""

from flywheel.explain.attributions import Explanation, explain, overlay_png

__all__ = ["Explanation", "explain", "overlay_png"]
