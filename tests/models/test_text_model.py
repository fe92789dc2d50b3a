"""text_minilm: the shipped MiniLM encoder, mean pooling and a linear head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flywheel.data import Arrays
from flywheel.data.text import MINILM, TextCodec
from flywheel.errors import ModelError
from flywheel.models import ModelSpec, create_model, default_hparams
from flywheel.models.text import MiniLMClassifier, load_encoder
from flywheel.models.zoo import arch_info
from flywheel.registry import WEIGHTS, load_artifact, save_artifact
from flywheel.training import TrainConfig, fit, predict_proba

LABELS = ("cooking", "football")
MAX_LENGTH = 16

COOKING = [
    "Simmer the tomato sauce for twenty minutes.",
    "Whisk the eggs with sugar until pale.",
    "Bake the bread at two hundred degrees.",
    "Chop the onions and fry them in butter.",
    "Season the soup with salt and pepper.",
    "Knead the dough until it is smooth.",
    "Roast the chicken with garlic and lemon.",
    "Stir the risotto and add more stock.",
    "Grate some cheese over the pasta.",
    "Let the cake cool before icing it.",
    "Marinate the beef overnight in soy sauce.",
    "Boil the potatoes until they are soft.",
    "Melt the chocolate over a pan of water.",
    "Slice the carrots thinly for the salad.",
    "Fold the flour gently into the batter.",
    "Fry the fish in hot olive oil.",
    "Peel the apples and bake a pie.",
    "Steam the rice for fifteen minutes.",
    "Add a pinch of cinnamon to the dough.",
    "Cook the noodles and drain them well.",
]
FOOTBALL = [
    "The striker scored a goal in the last minute.",
    "The goalkeeper saved the penalty kick.",
    "Our team won the league on Saturday.",
    "The referee showed him a red card.",
    "The midfielder passed the ball forward.",
    "The coach changed the defence at half time.",
    "Fans cheered as the match kicked off.",
    "He headed the ball into the net.",
    "The defender was booked for a foul.",
    "They lost the cup final on penalties.",
    "The winger crossed the ball to the striker.",
    "The match ended in a goalless draw.",
    "The club signed a new forward this summer.",
    "She dribbled past three players and scored.",
    "The stadium was full for the derby.",
    "The captain lifted the trophy after the game.",
    "An offside flag cancelled the goal.",
    "The team trained hard before the big match.",
    "The free kick curled into the top corner.",
    "The manager praised his players after the win.",
]
#: plenty of epochs: early stopping ends the run when the validation loss stalls
TRAIN = TrainConfig(epochs=60, batch_size=8, learning_rate=1e-2, val_fraction=0.2, patience=10)


def _spec(**hparams: object) -> ModelSpec:
    shape = (2, MAX_LENGTH)
    return ModelSpec(
        arch="text_minilm",
        task="text-classification",
        input_shape=shape,
        labels=LABELS,
        hparams={**default_hparams("text_minilm", shape), **hparams},
        preprocessing={"kind": "text", "tokenizer": MINILM, "max_length": MAX_LENGTH},
    )


def _seeded(spec: ModelSpec, seed: int) -> MiniLMClassifier:
    torch.manual_seed(seed)
    model = create_model(spec)
    assert isinstance(model, MiniLMClassifier)
    return model


@pytest.fixture(scope="module")
def toy() -> tuple[Arrays, Arrays]:
    """15 sentences per topic to train on, 5 per topic held out."""
    codec = TextCodec()
    params = {"kind": "text", "tokenizer": MINILM, "max_length": MAX_LENGTH}

    def arrays(texts: list[str], y: list[int]) -> Arrays:
        x = codec.decode_batch([t.encode() for t in texts], params)
        return Arrays(x=x, y=np.array(y, dtype=np.int64), labels=list(LABELS))

    train = arrays(COOKING[:15] + FOOTBALL[:15], [0] * 15 + [1] * 15)
    held_out = arrays(COOKING[15:] + FOOTBALL[15:], [0] * 5 + [1] * 5)
    return train, held_out


def test_the_arch_is_registered_for_text() -> None:
    info = arch_info("text_minilm")
    assert (info.modality, info.objective) == ("text", "classification")
    native = {"kind": "text", "tokenizer": MINILM, "max_length": 56}
    prep = info.preprocess(native, {})
    assert prep == native
    assert info.input_shape(prep) == (2, 56)
    assert info.defaults((2, 56)) == {"dropout": 0.1, "finetune_layers": 0, "encoder": MINILM}


def test_same_seed_gives_the_same_head_weights() -> None:
    a, b, c = _seeded(_spec(), 0), _seeded(_spec(), 0), _seeded(_spec(), 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == {"head.1.weight", "head.1.bias"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.1.weight"], sc["head.1.weight"])


def test_the_frozen_encoder_is_not_part_of_the_module() -> None:
    model = _seeded(_spec(), 0)
    assert [n for n, _ in model.named_parameters()] == ["head.1.weight", "head.1.bias"]
    split = model.split_frozen()
    assert split is not None
    prefix, rest = split
    assert rest is model.head
    assert all(not p.requires_grad for p in prefix.parameters())
    assert sum(p.numel() for p in prefix.parameters()) > 20_000_000


def test_the_output_is_deterministic_in_eval_mode_and_the_encoder_in_training(
    toy: tuple[Arrays, Arrays],
) -> None:
    model = _seeded(_spec(), 0).eval()
    x = torch.from_numpy(toy[0].x[:6])
    with torch.no_grad():
        first, second = model(x), model(x)
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(6)])
    assert first.shape == (6, len(LABELS))
    assert torch.equal(first, second)
    torch.testing.assert_close(one_by_one, first, rtol=1e-4, atol=1e-5)
    model.train()  # only the head's dropout changes; the frozen encoder stays in eval
    with torch.no_grad():
        assert torch.equal(model.embedder(x), model.embedder(x))


def test_gradients_reach_the_head_only_when_frozen(toy: tuple[Arrays, Arrays]) -> None:
    model = _seeded(_spec(), 0).train()
    with torch.set_grad_enabled(True):
        loss = model(torch.from_numpy(toy[0].x[:4])).sum()
        loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.embedder.parameters())
    with torch.set_grad_enabled(False):
        assert not model(torch.from_numpy(toy[0].x[:4])).requires_grad


def test_fit_learns_two_topics_from_the_frozen_embedding(toy: tuple[Arrays, Arrays]) -> None:
    train, held_out = toy
    model = _seeded(_spec(), 0)
    result = fit(model, train, TRAIN)
    accuracy = float((predict_proba(model, held_out.x).argmax(1) == held_out.y).mean())
    assert accuracy >= 0.9
    assert result.best_val_accuracy >= 0.8


def test_a_saved_frozen_model_holds_only_the_head_and_loads_identically(
    toy: tuple[Arrays, Arrays], tmp_path: Path
) -> None:
    spec = _spec()
    model = _seeded(spec, 0)
    fit(model, toy[0], TrainConfig(epochs=3, batch_size=8, val_fraction=0.2, seed=0))

    save_artifact(model, spec, tmp_path / "v1")
    stored = load_file(str(tmp_path / "v1" / WEIGHTS))
    loaded, loaded_spec = load_artifact(tmp_path / "v1")

    assert set(stored) == {"head.1.weight", "head.1.bias"}
    assert (tmp_path / "v1" / WEIGHTS).stat().st_size < 10_000
    assert loaded_spec.hparams["encoder"] == MINILM
    assert not loaded.training
    np.testing.assert_array_equal(predict_proba(loaded, toy[1].x), predict_proba(model, toy[1].x))


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((3, 2, MAX_LENGTH + 1), torch.int64),  # another max_length
        ((3, 3, MAX_LENGTH), torch.int64),  # a third row
        ((2, MAX_LENGTH), torch.int64),  # no batch axis
        ((3, 2, MAX_LENGTH), torch.float32),  # not token ids
    ],
)
def test_a_wrong_input_raises_model_error_naming_the_expected_shape(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    model = _seeded(_spec(), 0).eval()
    with pytest.raises(ModelError, match=f"2, {MAX_LENGTH}|int64") as info, torch.no_grad():
        model(torch.zeros(shape, dtype=dtype))
    if dtype == torch.int64:
        assert f"(N, 2, {MAX_LENGTH})" in str(info.value)
        assert str(shape) in str(info.value)


def test_token_ids_outside_the_vocabulary_raise_model_error() -> None:
    model = _seeded(_spec(), 0).eval()
    x = torch.ones(1, 2, MAX_LENGTH, dtype=torch.int64)
    x[0, 0, 3] = 10**6
    with pytest.raises(ModelError, match="token ids"), torch.no_grad():
        model(x)


@pytest.mark.parametrize("bad", [-1, 7])
def test_finetune_layers_beyond_the_encoder_raise_model_error(bad: int) -> None:
    with pytest.raises(ModelError, match="between 0 and 6"):
        create_model(_spec(finetune_layers=bad))


def test_an_unknown_encoder_raises_model_error() -> None:
    with pytest.raises(ModelError, match="unknown text encoder 'bert-huge'"):
        create_model(_spec(encoder="bert-huge"))


def test_finetuning_trains_and_saves_only_the_top_layers(
    toy: tuple[Arrays, Arrays], tmp_path: Path
) -> None:
    shared = load_encoder()
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    spec = _spec(finetune_layers=1)
    model = _seeded(spec, 0)
    assert model.split_frozen() is None
    assert {k.split(".")[0] for k in model.state_dict()} == {"head", "top"}
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    fit(model, toy[0], TrainConfig(epochs=1, batch_size=8, learning_rate=1e-4, seed=0))

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])}
    assert any(k.startswith("top.0.") for k in changed)
    assert all(torch.equal(v, before[k]) for k, v in shared.state_dict().items())
    save_artifact(model, spec, tmp_path / "v1")
    loaded, _ = load_artifact(tmp_path / "v1")
    np.testing.assert_array_equal(predict_proba(loaded, toy[1].x), predict_proba(model, toy[1].x))
