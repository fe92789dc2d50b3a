"""The tasks flywheel serves: each brings a codec, a default architecture and an input form."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TASKS", "Task", "get_task"]


@dataclass(frozen=True)
class Task:
    name: str
    modality: str  # the codec that reads its inputs
    objective: str  # classification or regression
    default_arch: str
    input: str  # how /v1/predict takes it: file (multipart), text (JSON), features (JSON)
    extra: str | None = None  # the pip extra it needs beyond the core install

    @property
    def is_regression(self) -> bool:
        return self.objective == "regression"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("image-classification", "image", "classification", "seed_cnn", "file"),
        Task("audio-classification", "audio", "classification", "lstm_audio", "file", "audio"),
        Task("text-classification", "text", "classification", "text_minilm", "text", "text"),
        Task("regression", "tabular", "regression", "mlp_regressor", "features"),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
