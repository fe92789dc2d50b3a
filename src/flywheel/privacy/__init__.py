"""Privacy: personal data scrubbed out of free text (more of issue 6 to come here)."""

from flywheel.privacy.pii import ENTITIES, PiiScrubber, Scrubbed

__all__ = ["ENTITIES", "PiiScrubber", "Scrubbed"]
