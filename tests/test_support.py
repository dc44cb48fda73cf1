"""The tests' own comparison of answers: equal within float32 rounding, nothing looser."""

from tests.support import same_answer


def test_answers_equal_within_float32_rounding_and_no_further() -> None:
    answer = {"prediction": [0.1, 0.7, 0.2], "label": "b", "count": 3, "flag": True}
    assert same_answer(answer, {**answer, "prediction": [0.1 + 1e-8, 0.7, 0.2 - 1e-8]})
    assert not same_answer(answer, {**answer, "prediction": [0.1001, 0.7, 0.2]})
    assert not same_answer(answer, {**answer, "prediction": [0.1, 0.7]})
    assert not same_answer(answer, {**answer, "label": "c"})
    assert not same_answer(answer, {**answer, "flag": 1})
    assert not same_answer(answer, {key: value for key, value in answer.items() if key != "count"})
