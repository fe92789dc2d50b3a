"""Privacy at the door: personal data scrubbed out of free text, metadata out of images."""

from flywheel.privacy.metadata import strip_metadata
from flywheel.privacy.pii import ENTITIES, PiiScrubber, Scrubbed

__all__ = ["ENTITIES", "PiiScrubber", "Scrubbed", "strip_metadata"]
