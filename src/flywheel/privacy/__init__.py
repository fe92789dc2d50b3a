"""Privacy: the door (personal data scrubbed out of free text, metadata out of images),
the key chain that turns user ids into pseudonyms, and, beside them, the ledger,
erasure, retention and the audit (``ledger``, ``forget``, ``identity``, ``service``)."""

from flywheel.privacy.metadata import strip_metadata
from flywheel.privacy.pii import ENTITIES, PiiScrubber, Scrubbed

__all__ = ["ENTITIES", "PiiScrubber", "Scrubbed", "strip_metadata"]
