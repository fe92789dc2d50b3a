"""What a model's output means: probabilities, the answer, or a value."""

from __future__ import annotations

import numpy as np

from flywheel.outputs import read_output, softmax


def test_softmax_rows_are_probabilities_even_for_huge_logits() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]], dtype=np.float32)
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(p[1], [0.2, 0.6, 0.2], rtol=1e-6)


def test_an_output_row_reads_as_the_first_best_label_or_a_value() -> None:
    label, probs, value = read_output(["cat", "dog", "eel"], np.array([0.2, 0.4, 0.4]))
    assert label == "dog"  # a tie goes to the first label, as arg-max does
    assert probs == {"cat": 0.2, "dog": 0.4, "eel": 0.4} and value is None
    assert read_output([], np.float32(2.5)) == (None, None, 2.5)
