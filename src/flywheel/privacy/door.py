"""The door: what is kept of an input. Text loses personal data (``scrub_pii``), images
their metadata (``strip_image_metadata``); the store, training data and the model all
see the bytes as kept."""

from __future__ import annotations

from collections import Counter

from flywheel.errors import InputError
from flywheel.privacy.metadata import strip_metadata
from flywheel.privacy.pii import PiiScrubber
from flywheel.settings import Settings
from flywheel.tasks import Task

__all__ = ["Door"]


class Door:
    def __init__(self, settings: Settings, task: Task) -> None:
        self.settings = settings
        self.modality = task.modality
        self._pii: PiiScrubber | None = None  # Presidio's engine, made on first use

    @property
    def scrubs(self) -> bool:
        """Whether this project's inputs are changed at the door at all."""
        st = self.settings
        return (self.modality == "text" and st.scrub_pii) or (
            self.modality == "image" and st.strip_image_metadata
        )

    def keep(self, content: bytes) -> bytes:
        """An input as it will be kept."""
        return self.scrub(content)[0]

    def scrub(self, content: bytes) -> tuple[bytes, dict[str, int]]:
        """(the input as kept, what was scrubbed by kind); unchanged for other tasks."""
        if not self.scrubs:
            return content, {}
        if self.modality == "image":
            kept, removed = strip_metadata(content)
            return kept, dict(Counter(removed))
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"text input is not UTF-8: {exc}") from exc
        if self._pii is None:
            self._pii = PiiScrubber()
        out = self._pii.scrub(text)
        return out.text.encode("utf-8"), out.counts
