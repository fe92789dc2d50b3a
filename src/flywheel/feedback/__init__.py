"""Feedback: curation of users' answers into training rows."""

from flywheel.feedback.curation import Answer, CuratedRow, Curation, curate

__all__ = ["Answer", "CuratedRow", "Curation", "curate"]
