"""monitoring/: Prometheus scrape targets, Grafana provisioning and the dashboard's queries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.containers.support import COMPOSE_FILES, REPO, require_tool, services

DASHBOARD = REPO / "monitoring/grafana/dashboards/jax-inference-gateway.json"


def test_prometheus_scrapes_services_that_exist_on_their_ports() -> None:
    config = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    for compose_file in COMPOSE_FILES:
        all_services = services(compose_file)
        names = set(all_services) | {a for s in all_services.values()
                                     for a in (s.get("networks") or {}).get("default", {}).get("aliases", [])}
        ports = {"gateway": "8080", "worker": "8000", "sidecar": "9100"}
        for job in config["scrape_configs"]:
            (sd,) = job["dns_sd_configs"]
            for name in sd["names"]:
                assert name in names, f"{compose_file.name} has no service {name}"
                assert str(sd["port"]) == ports[name]
        sidecar = all_services["sidecar"]["environment"]
        assert sidecar["SIDECAR_METRICS_PORT"] == ports["sidecar"]


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = services(REPO / "docker-compose.yml")["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    (provider,) = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/dashboards.yml").read_text())[
        "providers"]
    dashboards_dir = REPO / mounts[provider["options"]["path"]]
    assert DASHBOARD.parent == dashboards_dir.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_dir / Path(home).name).is_file()
    (datasource,) = yaml.safe_load((REPO / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]


def _metric_names(expr) -> set[str]:
    import promql_parser

    names = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        for attribute in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, (str, int, float)):
                stack.append(child)
        stack.extend(getattr(node, "args", None) or [])
    return names


def test_dashboard_queries_parse_and_use_metrics_the_code_defines() -> None:
    try:
        import promql_parser
    except ImportError:
        promql_parser = None
    require_tool(promql_parser, "promql-parser")
    sources = "\n".join(p.read_text() for d in ("gateway", "worker", "jobs") for p in (REPO / d).glob("*.py"))
    grafana_variables = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
    used = set()
    for query in dashboard_queries():
        for variable, value in grafana_variables.items():
            query = query.replace(variable, value)
        used |= _metric_names(promql_parser.parse(query))
    for metric in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
        assert re.search(rf"[\"']{base}[\"']", sources), f"the dashboard queries {metric}, which no code defines"
    required = {"gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_backend_up",
                "gateway_retries_total", "worker_batch_size_bucket", "worker_queue_wait_seconds_bucket",
                "worker_batch_compute_seconds_bucket", "worker_jit_compilations_total", "jobs_total"}
    assert required <= used
