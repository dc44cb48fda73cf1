"""``python -m bench.lone_request``: the alternated comparison of one hop, and the least Python proxy it holds the
gateway against. Structure only, never a timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import haproxy, lone_request


def _point(p50: float, cpu: float | None = None) -> dict:
    point = {"p50_ms": p50, "p99_ms": 2 * p50, "rps": 1000 / p50, "errors": 0}
    if cpu is not None:
        point["cpu_us_per_request"] = cpu
    return point


def test_a_proxys_added_p50_is_taken_against_the_direct_p50_of_the_same_round() -> None:
    points = {"direct": [_point(1.0), _point(2.0), _point(1.0)],
              "gateway": [_point(1.5, 300), _point(2.4, 280), _point(1.6, 320)]}
    direct, gateway = lone_request.summary(points)
    assert "added_p50_ms" not in direct and direct["p50_ms"] == 1.0
    # Per round +0.5, +0.4, +0.6: the median is 0.5, where the medians' difference would be 1.6 - 1.0.
    assert gateway["added_p50_ms"] == 0.5 and gateway["cpu_us_per_request"] == 300
    table = lone_request.markdown([direct, gateway])
    assert "| gateway | 1.600 | +0.500 | 300 |" in table and "| direct | 1.000 | - | - |" in table


@pytest.mark.integration
def test_every_proxy_answers_beside_the_workers_in_alternated_rounds(tmp_path: Path) -> None:
    out = tmp_path / "lone.json"
    results = lone_request.main(["--model", "default", "--rounds", "2", "--duration", "0.3", "--warmup", "0.3",
                                 "--out", str(out)])
    expected = {"direct", "gateway", "python_raw", "python_uvicorn"}
    expected |= {"haproxy"} if haproxy.find_haproxy() else set()
    assert set(results["points"]) == expected and out.is_file()
    for name, points in results["points"].items():
        assert len(points) == 2 and all(point["errors"] == 0 for point in points), name
    for row in results["summary"]:
        if row["target"] != "direct":
            assert row["cpu_us_per_request"] > 0, row
