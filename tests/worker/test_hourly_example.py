"""The hourly-load example (worker/examples/hourly.py): a scalar int32 row, continuous outputs, no labels."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from worker.contract import TensorSpec, check_declarations, save_npz
from worker.errors import InvalidInput
from worker.examples.hourly import DAILY_CURVE, HourlyLoad
from worker.predictor import Predictor


def test_declarations_are_a_scalar_int_row() -> None:
    check_declarations(HourlyLoad)
    assert (HourlyLoad.input_shape, HourlyLoad.input_dtype, HourlyLoad.labels) == ((), "int32", None)


def test_the_day_wraps_and_each_row_gets_one_number_per_output(tmp_path: Path) -> None:
    model = HourlyLoad()
    out = jax.jit(model.predict_batch)(model.load(tmp_path), np.arange(48, dtype=np.int32))
    load, relative = np.asarray(out["load"]), np.asarray(out["relative"])
    assert load.shape == relative.shape == (48,)
    np.testing.assert_allclose(load[:24], load[24:], rtol=1e-5)  # hour 24 is hour 0
    np.testing.assert_allclose(load[:24].mean(), DAILY_CURVE[0], rtol=1e-5)  # the harmonics average out
    np.testing.assert_allclose(relative, load / DAILY_CURVE[0], rtol=1e-6)
    assert load[:6].max() < load[9:18].min()  # the night is quieter than the working day


def test_the_default_postprocess_answers_the_load_as_prediction(tmp_path: Path) -> None:
    model = HourlyLoad()
    row = {"load": np.float32(120.0), "relative": np.float32(1.2)}
    assert model.postprocess(row, {}) == {"prediction": [120.0], "relative": float(np.float32(1.2))}


def test_weights_in_the_artifact_folder_replace_the_shipped_curve(tmp_path: Path) -> None:
    save_npz({"weights": np.array([10.0, 0, 0, 0, 0], np.float32)}, HourlyLoad().params_file(tmp_path))
    model = HourlyLoad()
    out = model.predict_batch(model.load(tmp_path), np.array([0, 13], np.int32))
    np.testing.assert_allclose(np.asarray(out["load"]), [10.0, 10.0])


def test_an_integer_input_refuses_fractions_and_takes_whole_floats() -> None:
    outputs = (TensorSpec("load", (), "float32", ""), TensorSpec("relative", (), "float32", ""))
    predictor = Predictor(HourlyLoad(), outputs, batcher=None, worker_id="0", max_rows_per_request=8)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="whole numbers for int32"):
        predictor.parse_one(b'{"input_data": 9.9}')
    with pytest.raises(InvalidInput, match="whole numbers for int32"):
        predictor.parse_many(b'[{"input_data": 3}, {"input_data": 9.5}]')
    assert predictor.parse_one(b'{"input_data": 9.0}').values.tolist() == [9]  # 9.0 is the number 9
