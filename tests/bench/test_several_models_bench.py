"""A few seconds of the two-model benchmark on real workers, so `python -m bench.several_models` cannot rot.

Asserts the results' structure and that no request failed or was answered by the other model; never a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.several_models import main, markdown

pytestmark = pytest.mark.integration


def test_two_models_through_one_gateway_against_each_alone(tmp_path: Path) -> None:
    out = tmp_path / "several-models.json"
    results = main(["--duration", "1", "--repeat", "1", "--warmup", "0", "--concurrency", "2", "--loadgen", "python",
                    "--out", str(out), "--log-dir", str(tmp_path / "logs")])
    assert json.loads(out.read_text()) == results
    assert [one["model"] for one in results["models"]] == ["iris-bayes-logreg", "bayes-linreg"]
    for one in results["models"]:
        assert one["alone_errors"] == one["together_errors"] == 0, one
        assert one["wrong_model"] == 0 and one["checked"] > 0, one
        assert one["alone_rows_s"] > 0 and one["together_rows_s"] > 0
        assert one["alone_rows_per_batch"] >= 1 and one["together_rows_per_batch"] >= 1
    assert "| iris-bayes-logreg |" in markdown(results)


def test_one_model_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--models", "worker.examples.iris:IrisBayesianLogReg"])
