"""Drift and label-free accuracy per window of production calls (license-clean: numpy,
scipy and torch; see ``flywheel.drift.stats``)."""

from flywheel.drift.stats import Reference, WindowScores, build_reference

__all__ = ["Reference", "WindowScores", "build_reference"]
