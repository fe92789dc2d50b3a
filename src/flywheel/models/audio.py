"""Audio classification: an LSTM over log-mel frames (``lstm_audio``)."""

from __future__ import annotations

import torch
from torch import nn

from flywheel.data.audio import audio_shape
from flywheel.errors import ModelError
from flywheel.models.spec import ModelSpec
from flywheel.models.vision import check_input
from flywheel.models.zoo import ArchInfo, register_arch

__all__ = ["LSTMAudio"]


class LSTMAudio(nn.Module):
    """``[N, frames, n_mels]`` → LSTM → (mean over time ‖ last step) → dropout → classes.

    Softmax is left to the loss (cross-entropy on logits) and to prediction.
    """

    def __init__(
        self,
        *,
        frames: int,
        n_mels: int,
        n_classes: int,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if frames < 1 or n_mels < 1 or hidden < 1 or layers < 1 or n_classes < 1:
            raise ModelError(
                f"lstm_audio needs positive sizes; got frames={frames}, n_mels={n_mels}, "
                f"hidden={hidden}, layers={layers}, classes={n_classes}"
            )
        self.input_shape = (frames, n_mels)
        self.lstm = nn.LSTM(
            input_size=n_mels,
            hidden_size=hidden,
            num_layers=layers,
            batch_first=True,
            # torch applies it between layers only (and warns when there is one layer)
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("lstm_audio", x, self.input_shape)
        out, _ = self.lstm(x)
        pooled = torch.cat([out.mean(dim=1), out[:, -1]], dim=1)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits


def _build(spec: ModelSpec) -> nn.Module:
    if len(spec.input_shape) != 2:
        raise ModelError(
            "lstm_audio takes inputs of shape (frames, n_mels); "
            f"the spec gives {tuple(spec.input_shape)}"
        )
    frames, n_mels = spec.input_shape
    hp = spec.hparams
    return LSTMAudio(
        frames=frames,
        n_mels=n_mels,
        n_classes=len(spec.labels),
        hidden=int(hp.get("hidden", 128)),
        layers=int(hp.get("layers", 2)),
        dropout=float(hp.get("dropout", 0.25)),
    )


register_arch(
    ArchInfo(
        name="lstm_audio",
        modality="audio",
        objective="classification",
        build=_build,
        preprocess=lambda native, options: dict(native),
        input_shape=audio_shape,
        defaults=lambda shape: {"hidden": 128, "layers": 2, "dropout": 0.25},
        summary="an LSTM (2x128) over 40 log-mel frames per 10 ms; mean and last step → classes",
    )
)
