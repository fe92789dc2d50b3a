"""Trust: honest users earn it, liars lose it, and the counts say why."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.feedback.trust import UserTrust, Vote, answer_weight, estimate_trust

DIGITS = [str(d) for d in range(10)]


def _crowd(seed: int = 0) -> tuple[list[Vote], dict[str, str]]:
    """10 honest users (95% right) and 2 liars (one random, one always off by one), 50 items."""
    rng = np.random.default_rng(seed)
    truth = {f"x{n:02d}": str(rng.integers(10)) for n in range(50)}
    votes = []
    for u in range(10):
        for item, label in truth.items():
            if rng.random() >= 0.95:
                label = str(rng.choice([d for d in DIGITS if d != label]))
            votes.append(Vote(f"honest{u}", item, label))
    for item, label in truth.items():
        votes.append(Vote("liar-random", item, str(rng.integers(10))))
        votes.append(Vote("liar-flip", item, str((int(label) + 1) % 10)))
    return votes, truth


def test_honest_users_are_trusted_and_liars_are_not() -> None:
    votes, _ = _crowd()
    trust = estimate_trust(votes, labels=DIGITS)
    honest = [t.trust for u, t in trust.items() if u.startswith("honest")]
    liars = [t.trust for u, t in trust.items() if u.startswith("liar")]
    assert len(honest) == 10 and len(liars) == 2
    assert min(honest) > max(liars)
    assert min(honest) > 0.85
    assert float(np.mean(honest)) > 0.9
    assert max(liars) < 0.5
    assert trust["liar-flip"].trust < 0.1  # (0 right + 2) / (50 + 3)
    assert trust["liar-flip"].votes == 50
    assert all(0.0 < t.trust < 1.0 for t in trust.values())


def test_a_golden_item_the_liar_gets_wrong_lowers_their_trust() -> None:
    votes = [
        Vote("ann", "i1", "a"),
        Vote("bob", "i1", "a"),
        Vote("ann", "i2", "b"),
        Vote("bob", "i2", "b"),
        Vote("liar", "i2", "a"),
        # Nobody else answered i3: without a golden label the liar cannot be caught there.
        Vote("liar", "i3", "a"),
    ]
    labels = ["a", "b"]
    plain = estimate_trust(votes, labels=labels)
    checked = estimate_trust(votes, labels=labels, golden={"i3": "b"})
    assert checked["liar"].trust < plain["liar"].trust
    assert (checked["liar"].golden_seen, checked["liar"].golden_correct) == (1, 0)
    assert (plain["liar"].golden_seen, plain["liar"].golden_correct) == (0, 0)
    # Once the liar is caught, the item they disputed is clearer, so the honest gain.
    assert checked["ann"].trust > plain["ann"].trust


def test_a_new_user_with_one_vote_sits_near_the_prior_mean() -> None:
    votes, truth = _crowd()
    first_item, first_label = next(iter(truth.items()))
    votes = [*votes, Vote("newcomer", first_item, first_label), Vote("loner", "unseen", "7")]
    trust = estimate_trust(votes, labels=DIGITS, prior=(2.0, 1.0))
    prior_mean = 2.0 / 3.0
    # One vote the crowd confirms: (1 + 2) / (1 + 3), not 1.
    assert trust["newcomer"].trust == pytest.approx(0.75, abs=1e-6)
    assert abs(trust["newcomer"].trust - prior_mean) < 0.1
    # One vote nobody can check: exactly the prior mean, not 0 and not 1.
    assert trust["loner"].trust == pytest.approx(prior_mean, abs=1e-9)


def test_counts_are_exact_on_a_hand_built_case() -> None:
    votes = [
        Vote("ann", "i1", "a"),
        Vote("bob", "i1", "b"),
        Vote("cat", "i1", "a"),
        Vote("ann", "i2", "b"),
        Vote("bob", "i2", "b"),
        Vote("ann", "i3", "a"),  # replaced by ann's later vote on i3
        Vote("cat", "i3", "a"),
        Vote("ann", "i3", "c"),
        Vote("bob", "i4", "a"),
    ]
    trust = estimate_trust(
        votes,
        labels=["a", "b", "c"],
        golden={"i1": "a", "elsewhere": "b"},
        model={"i2": ("b", 0.99), "i3": ("a", 0.5), "elsewhere": ("c", 0.99)},
    )
    assert list(trust) == ["ann", "bob", "cat"]
    counts = {
        u: (
            t.votes,
            t.golden_seen,
            t.golden_correct,
            t.agreed_with_others,
            t.compared_with_others,
            t.agreed_with_model,
            t.compared_with_model,
        )
        for u, t in trust.items()
    }
    assert counts == {
        # i1: cat agrees, bob not; i2: bob agrees; i3: cat not. Model only confident on i2.
        "ann": (3, 1, 1, 2, 4, 1, 1),
        # i1: ann and cat both not; i2: ann agrees; i4: nobody else.
        "bob": (3, 1, 0, 1, 3, 1, 1),
        # i1: ann agrees, bob not; i3: ann not. The model was unsure on i3.
        "cat": (2, 1, 1, 1, 3, 0, 0),
    }
    assert trust["bob"].trust < trust["cat"].trust < trust["ann"].trust
    assert set(trust["ann"].to_json()) == {
        "user_id",
        "trust",
        "votes",
        "golden_seen",
        "golden_correct",
        "agreed_with_others",
        "compared_with_others",
        "agreed_with_model",
        "compared_with_model",
        "label_trust",
    }


def test_same_input_same_output() -> None:
    votes, truth = _crowd(seed=3)
    golden = dict(list(truth.items())[:5])
    model = {item: (label, 0.97) for item, label in list(truth.items())[5:15]}
    first = estimate_trust(votes, labels=DIGITS, golden=golden, model=model)
    again = estimate_trust(list(reversed(votes)), labels=DIGITS, golden=golden, model=model)
    assert first == again
    assert all(isinstance(t, UserTrust) for t in first.values())


def test_a_confident_model_exposes_a_lone_liar() -> None:
    # Two users, each the only one on their items: only the model can tell them apart.
    votes = [Vote("ann", f"a{n}", "cat") for n in range(6)]
    votes += [Vote("liar", f"l{n}", "dog") for n in range(6)]
    model = {f"a{n}": ("cat", 0.98) for n in range(6)} | {f"l{n}": ("cat", 0.98) for n in range(6)}
    trust = estimate_trust(votes, labels=["cat", "dog"], model=model)
    assert trust["ann"].trust > 0.8 > 0.3 > trust["liar"].trust
    unsure = {item: (label, 0.9) for item, (label, _) in model.items()}  # below the 0.95 bar
    blind = estimate_trust(votes, labels=["cat", "dog"], model=unsure)
    assert blind["ann"].trust == pytest.approx(blind["liar"].trust, abs=1e-12)
    assert blind["liar"].compared_with_model == 0


def _coordinated_attack() -> tuple[list[Vote], dict[str, str]]:
    """4 honest users answer every item in pairs; 3 liars all give one wrong label on 12 of 40."""
    labels = ["a", "b", "c"]
    items = [f"x{n:02d}" for n in range(40)]
    truth = {item: labels[n % 3] for n, item in enumerate(items)}
    honest = [f"honest{u}" for u in range(4)]
    votes = [
        Vote(user, item, truth[item])
        for n, item in enumerate(items)
        for user in (honest[n % 4], honest[(n + 1) % 4])
    ]
    for liar in ("liar0", "liar1", "liar2"):
        for item in items[:12]:
            wrong = labels[(labels.index(truth[item]) + 1) % 3]
            votes.append(Vote(liar, item, wrong))
    return votes, truth


def test_coordinated_liars_rank_below_honest_users_once_golden_items_exist() -> None:
    votes, truth = _coordinated_attack()
    golden = {item: truth[item] for item in sorted(truth)[::5]}  # 8 golden, 3 among the liars'
    # Without golden items the clique outvotes the honest pair wherever it shows up.
    fooled = estimate_trust(votes, labels=["a", "b", "c"])
    assert fooled["liar0"].trust > fooled["honest0"].trust
    trust = estimate_trust(votes, labels=["a", "b", "c"], golden=golden)
    honest = [t.trust for u, t in trust.items() if u.startswith("honest")]
    liars = [t.trust for u, t in trust.items() if u.startswith("liar")]
    assert min(honest) > 0.9
    assert max(liars) < 0.2
    assert [
        (t.golden_seen, t.golden_correct) for u, t in trust.items() if u.startswith("liar")
    ] == [(3, 0)] * 3
    # The liars still agree with each other: the score, not the agreement, tells them apart.
    assert trust["liar0"].agreed_with_others == 24


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        estimate_trust([Vote("ann", "i1", "zebra")], labels=["a", "b"])
    with pytest.raises(ValueError, match="golden item 'i1'"):
        estimate_trust([Vote("ann", "i1", "a")], labels=["a", "b"], golden={"i1": "zebra"})
    with pytest.raises(ValueError, match="at least two labels"):
        estimate_trust([Vote("ann", "i1", "a")], labels=["a"])
    with pytest.raises(ValueError, match="prior"):
        estimate_trust([], labels=["a", "b"], prior=(0.0, 1.0))
    assert estimate_trust([], labels=["a", "b"]) == {}


def _targeted_attack(seed: int = 0) -> tuple[list[Vote], dict[str, str]]:
    """10 honest users and one adversary who answers '8' for every true '3', 1000 items.

    Each item is answered by 2–4 users drawn at random (3 on average). Everyone
    else, the adversary included, answers honestly but for 4% random noise. The
    target is a common class (3s are 20% of items) pushed into a rare one (8s are
    6%), so most of the adversary's '8's are wrong while most of their answers are
    right. (With balanced classes half their '8's would be right, and their
    label_trust['8'] would sit near 0.5.)
    """
    rng = np.random.default_rng(seed)
    share = [0.0925] * 10
    share[3], share[8] = 0.2, 0.06
    truth = {f"t{n:04d}": DIGITS[rng.choice(10, p=share)] for n in range(1000)}
    users = [f"honest{u}" for u in range(10)] + ["adversary"]
    votes = []
    for item, label in truth.items():
        for user in sorted(rng.choice(users, size=int(rng.integers(2, 5)), replace=False)):
            answer = label
            if user == "adversary" and label == "3":
                answer = "8"
            elif rng.random() < 0.04:
                answer = str(rng.choice([d for d in DIGITS if d != label]))
            votes.append(Vote(str(user), item, answer))
    return votes, truth


def test_a_targeted_adversary_keeps_overall_trust_but_loses_trust_in_their_eights() -> None:
    votes, _ = _targeted_attack()
    trust = estimate_trust(votes, labels=DIGITS)
    adversary = trust["adversary"]
    honest = [t for u, t in trust.items() if u.startswith("honest")]
    assert len(honest) == 10
    # One accuracy cannot see it: right on everything but the 3s.
    assert adversary.trust > 0.7
    assert adversary.label_trust["8"] < 0.3
    assert min(t.label_trust["8"] for t in honest) > 0.8
    assert min(t.trust for t in honest) > 0.9
    # Where they answer honestly their labels stay trusted; they never answer '3'.
    assert "3" not in adversary.label_trust
    assert adversary.label_trust["5"] > 0.8
    # Curation weighs the answer, not just the user.
    assert answer_weight(adversary, "8", 0.5) == adversary.label_trust["8"]
    assert answer_weight(adversary, "5", 0.5) > 3 * answer_weight(adversary, "8", 0.5)
    assert answer_weight(honest[0], "8", 0.5) > 3 * answer_weight(adversary, "8", 0.5)


def test_golden_threes_lower_the_adversarys_trust_in_their_eights_further() -> None:
    votes, truth = _targeted_attack()
    answered = {v.item for v in votes if v.user_id == "adversary"}
    golden = dict([(i, label) for i, label in truth.items() if label == "3" and i in answered][:5])
    assert len(golden) == 5
    plain = estimate_trust(votes, labels=DIGITS)
    checked = estimate_trust(votes, labels=DIGITS, golden=golden)
    assert (checked["adversary"].golden_seen, checked["adversary"].golden_correct) == (5, 0)
    assert checked["adversary"].label_trust["8"] < plain["adversary"].label_trust["8"]
    assert checked["adversary"].trust < plain["adversary"].trust


def test_label_trust_is_shrunk_toward_overall_trust_exactly() -> None:
    # Golden items make every posterior exact: 3 of ann's 4 'a's and her one 'b' are right.
    votes = [Vote("ann", f"i{n}", "a") for n in range(4)] + [Vote("ann", "i4", "b")]
    golden = {"i0": "a", "i1": "a", "i2": "a", "i3": "b", "i4": "b"}
    trust = estimate_trust(votes, labels=["a", "b", "c"], golden=golden)
    ann = trust["ann"]
    assert ann.trust == pytest.approx((4 + 2) / (5 + 3))
    assert ann.label_trust == {
        "a": pytest.approx((3 + 2 * ann.trust) / (4 + 2)),
        "b": pytest.approx((1 + 2 * ann.trust) / (1 + 2)),
    }
    # A larger pseudo-count pulls both toward the overall trust.
    loose = estimate_trust(votes, labels=["a", "b", "c"], golden=golden, label_pseudo_count=100.0)
    assert loose["ann"].trust == ann.trust
    assert loose["ann"].label_trust["a"] == pytest.approx((3 + 100 * ann.trust) / 104)
    with pytest.raises(ValueError, match="label_pseudo_count"):
        estimate_trust(votes, labels=["a", "b"], label_pseudo_count=0.0)


def test_a_label_nobody_can_check_sits_at_the_users_trust() -> None:
    votes, _ = _crowd()
    votes = [*votes, Vote("loner", "unseen", "7")]
    trust = estimate_trust(votes, labels=DIGITS)
    # One vote on an item nobody else answered: the posterior there is the
    # loner's own accuracy, so the shrunk precision is exactly their trust.
    assert trust["loner"].label_trust == {"7": pytest.approx(trust["loner"].trust, abs=1e-12)}


def test_answer_weight_falls_back() -> None:
    t = UserTrust("ann", 0.9, 10, 0, 0, 0, 0, 0, 0, label_trust={"8": 0.2})
    assert answer_weight(t, "8", 0.5) == 0.2
    assert answer_weight(t, "3", 0.5) == 0.9  # no per-label estimate: overall trust
    assert answer_weight(None, "8", 0.5) == 0.5  # no estimate at all: the default
    bare = UserTrust("bob", 0.7, 1, 0, 0, 0, 0, 0, 0)  # built the old way
    assert bare.label_trust == {}
    assert answer_weight(bare, "8", 0.5) == 0.7
    assert bare.to_json()["label_trust"] == {}
    assert hash(bare) == hash(UserTrust("bob", 0.7, 1, 0, 0, 0, 0, 0, 0, label_trust={"x": 1.0}))


def test_label_trust_is_deterministic_and_in_json() -> None:
    votes, truth = _targeted_attack(seed=1)
    golden = dict(list(truth.items())[:10])
    first = estimate_trust(votes, labels=DIGITS, golden=golden)
    again = estimate_trust(list(reversed(votes)), labels=DIGITS, golden=golden)
    assert first == again
    assert {u: t.to_json() for u, t in first.items()} == {u: t.to_json() for u, t in again.items()}
    assert first["adversary"].to_json()["label_trust"] == first["adversary"].label_trust
    assert list(first["honest0"].label_trust) == sorted(first["honest0"].label_trust)
    assert all(0.0 < w < 1.0 for t in first.values() for w in t.label_trust.values())
