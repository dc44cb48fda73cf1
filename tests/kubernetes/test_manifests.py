"""The rendered manifests agree with the code: settings, ports, names, secrets, shutdown, security.

The same approach as tests/containers/test_compose.py for the compose files: every variable a
container gets is a setting its process reads, every port and name the objects use is the one
the processes serve on or the other objects declare.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.containers.support import REPO, check_command, parse_dockerfile, services, unread_environment
from tests.kubernetes.support import (
    DEPLOY,
    OUR_CONTAINERS,
    by_kind,
    config_map,
    containers,
    environment,
    one,
    overlays,
    render,
    secret_refs,
    selects,
    workloads,
)

#: Keys of the Secret the RabbitMQ operator makes for a RabbitmqCluster (internal/resource/default_user_secret.go).
OPERATOR_SECRET_KEYS = {"username", "password", "host", "port", "connection_string", "provider", "type"}
DOCS = (REPO / "docs" / "kubernetes.md").read_text()


def _our_containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    return [(w, c) for w in workloads(objects) for name, c in containers(w).items() if name in OUR_CONTAINERS]


def _worker_pod(objects: list[dict]) -> dict[str, dict]:
    return containers(one(objects, "Deployment", "worker"))


@overlays
def test_environment_names_settings_the_processes_read(overlay: str) -> None:
    objects = render(overlay)
    seen = set()
    for _, container in _our_containers(objects):
        seen.add(container["name"])
        unknown = unread_environment(container["name"], set(environment(objects, container)))
        assert not unknown, f"{container['name']} gets {unknown}, which it never reads"
    assert seen == OUR_CONTAINERS


@overlays
def test_settings_values_parse_with_the_settings_classes(overlay: str) -> None:
    """A value the settings class would refuse fails here, not in a crash-looping pod."""
    from gateway.settings import GatewaySettings
    from jobs.settings import JobsSettings
    from worker.settings import WorkerSettings

    objects = render(overlay)
    classes = {"gateway": [GatewaySettings, JobsSettings], "worker": [WorkerSettings], "sidecar": [JobsSettings]}
    for _, container in _our_containers(objects):
        values = {k: v for k, v in environment(objects, container).items() if isinstance(v, str)}
        for settings_class in classes[container["name"]]:
            given = {k.lower(): v for k, v in values.items() if k.lower() in settings_class.model_fields}
            assert set(given) <= settings_class(**given).model_fields_set, container["name"]


@overlays
def test_ports_are_the_ones_the_processes_listen_on(overlay: str) -> None:
    objects = render(overlay)
    gateway = containers(one(objects, "Deployment", "gateway"))["gateway"]
    pod = _worker_pod(objects)
    listen = {
        ("gateway", "http"): environment(objects, gateway)["PORT"],
        ("worker", "http"): environment(objects, pod["worker"])["PORT"],
        ("sidecar", "sidecar-metrics"): environment(objects, pod["sidecar"])["SIDECAR_METRICS_PORT"],
    }
    for (name, port_name), port in listen.items():
        container = gateway if name == "gateway" else pod[name]
        (declared,) = [p for p in container["ports"] if p["name"] == port_name]
        assert str(declared["containerPort"]) == port, f"{name} listens on {port}, declares {declared}"
    for container in (gateway, pod["worker"], pod["sidecar"]):
        host_variable = "SIDECAR_METRICS_HOST" if container["name"] == "sidecar" else "HOST"
        assert environment(objects, container)[host_variable] == "0.0.0.0", f"{container['name']} listens on loopback"


@overlays
def test_the_gateway_finds_every_worker_pod_through_a_headless_service(overlay: str) -> None:
    objects = render(overlay)
    gateway_env = environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])
    (entry,) = gateway_env["WORKERS"].split(",")
    host, port = entry.split(":")
    service = one(objects, "Service", host)
    assert service["spec"]["clusterIP"] == "None", "one address per pod needs a headless Service"
    worker = one(objects, "Deployment", "worker")
    assert selects(service["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
    assert port == environment(objects, _worker_pod(objects)["worker"])["PORT"]
    # A terminating worker leaves the gateways' rotation before it stops serving.
    pre_stop = _worker_pod(objects)["worker"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert float(gateway_env["WORKERS_RESOLVE_INTERVAL_S"]) < pre_stop


@overlays
def test_the_sidecar_runs_jobs_on_its_own_worker_over_localhost(overlay: str) -> None:
    objects = render(overlay)
    pod = _worker_pod(objects)
    assert set(pod) == {"worker", "sidecar"}
    worker_port = environment(objects, pod["worker"])["PORT"]
    assert environment(objects, pod["sidecar"])["WORKER_URL"] == f"http://127.0.0.1:{worker_port}"
    assert pod["sidecar"]["image"] == pod["worker"]["image"], "the train task needs the worker image's JAX"
    cache = environment(objects, pod["worker"])["JAX_CACHE_DIR"]
    assert environment(objects, pod["sidecar"])["JAX_COMPILATION_CACHE_DIR"] == cache
    for container in pod.values():
        assert cache in {m["mountPath"] for m in container["volumeMounts"]}, container["name"]


@overlays
def test_the_sidecar_spreads_large_jobs_through_the_gateway_service_with_a_key_it_may_lack(overlay: str) -> None:
    objects = render(overlay)
    service = one(objects, "Service", "gateway")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    sidecar = environment(objects, _worker_pod(objects)["sidecar"])
    assert sidecar["SIDECAR_SPREAD_URL"] == f"http://{service['metadata']['name']}:{port}"
    key = sidecar["WORKER_API_KEY"]["secretKeyRef"]
    assert key["optional"] is True, "a deployment without the sidecars' key still runs jobs, on the own worker"


@overlays
def test_commands_and_images_are_the_ones_compose_builds(overlay: str) -> None:
    compose_file = "docker-compose.gpu.yml" if overlay == "gpu" else "docker-compose.yml"
    compose = services(REPO / compose_file)
    images = {s["image"].split(":")[0] for s in compose.values() if "build" in s}
    objects = render(overlay)
    for _, container in _our_containers(objects):
        name, _, tag = container["image"].rpartition(":")
        assert name in images and tag == "local", f"{container['image']} is not built by {compose_file}"
        if "command" in container:
            check_command(container["command"])
    sidecar_command = next(s["command"] for s in compose.values() if s.get("command", [""])[-1] == "jobs.sidecar")
    assert _worker_pod(objects)["sidecar"]["command"] == sidecar_command


@overlays
def test_jobs_settings_are_the_same_for_the_gateway_and_the_sidecars(overlay: str) -> None:
    from jobs.settings import JobsSettings

    objects = render(overlay)
    jobs_fields = {name.upper() for name in JobsSettings.model_fields}
    gateway = environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])
    sidecar = environment(objects, _worker_pod(objects)["sidecar"])
    shared = {"AMQP_URL", "JOB_QUEUE", "S3_ENDPOINT_URL", "S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_REGION"} & jobs_fields
    assert {k: gateway.get(k) for k in shared} == {k: sidecar.get(k) for k in shared}
    assert "AMQP_URL" in gateway and "S3_BUCKET" in gateway, "the embedded broker and local store are one pod's"


@overlays
def test_secrets_come_from_secret_objects_that_are_made_or_documented(overlay: str) -> None:
    """Nothing secret is in a ConfigMap; every Secret key read is made by the operator or by a documented command."""
    objects = render(overlay)
    operator_made = {o["metadata"]["name"] + "-default-user" for o in by_kind(objects, "RabbitmqCluster")}
    secret_word = re.compile(r"PASSWORD|SECRET|TOKEN|AMQP_URL", re.I)
    for configmap in by_kind(objects, "ConfigMap"):
        assert not [k for k in configmap.get("data", {}) if secret_word.search(k)], configmap["metadata"]["name"]
    documented_keys = set()
    for command in DOCS.split("kubectl create secret generic ")[1:]:
        name, text = command.split(maxsplit=1)
        text = text.split("```", 1)[0].split("\n\n", 1)[0]
        documented_keys |= {(name, key) for key in re.findall(r"--from-literal=(\w+)=", text)}
    for reader, name, key in secret_refs(objects):
        if name in operator_made:
            assert key in OPERATOR_SECRET_KEYS, f"{reader}: the operator's Secret has no {key}"
        else:
            assert (name, key) in documented_keys, f"{reader} reads {name}/{key}: docs/kubernetes.md never makes it"
    tls = {t["secretName"] for ingress in by_kind(objects, "Ingress") for t in ingress["spec"]["tls"]}
    assert tls and all(f"kubectl create secret tls {name}" in DOCS for name in tls)


def _graceful_timeout(monkeypatch: pytest.MonkeyPatch, processes: str) -> int:
    monkeypatch.setenv("GATEWAY_PROCESSES", processes)
    # The config sets PROMETHEUS_MULTIPROC_DIR for several processes: through monkeypatch, so it is undone after.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    return runpy.run_path(str(REPO / "gateway/gunicorn_conf.py"))["graceful_timeout"]


def _uvicorn_graceful_timeout() -> int:
    (seconds,) = re.findall(r"timeout_graceful_shutdown=(\d+)", (REPO / "worker/__main__.py").read_text())
    return int(seconds)


@overlays
def test_termination_grace_covers_the_drain(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.settings import JobsSettings

    objects = render(overlay)
    gateway = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    (container,) = gateway["containers"]
    processes = environment(objects, container)["GATEWAY_PROCESSES"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert gateway["terminationGracePeriodSeconds"] > pre_stop + _graceful_timeout(monkeypatch, processes)

    worker = one(objects, "Deployment", "worker")["spec"]["template"]["spec"]
    pod = _worker_pod(objects)
    pre_stop = pod["worker"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    # After preStop, SIGTERM: the worker's own drain (DRAIN_S, then the listener's linger), then uvicorn's.
    from common.draining import LINGER_S
    from worker.settings import WorkerSettings

    drain_s = float(environment(objects, pod["worker"]).get("DRAIN_S", WorkerSettings.model_fields["drain_s"].default))
    assert worker["terminationGracePeriodSeconds"] > pre_stop + drain_s + LINGER_S + _uvicorn_graceful_timeout()
    # The sidecar is stopped at once and finishes its jobs on a worker that still serves.
    sidecar_env = environment(objects, pod["sidecar"])
    default_grace = JobsSettings.model_fields["sidecar_shutdown_grace_s"].default
    grace = float(sidecar_env.get("SIDECAR_SHUTDOWN_GRACE_S", default_grace))
    assert "lifecycle" not in pod["sidecar"] and grace < pre_stop
    assert worker["terminationGracePeriodSeconds"] > grace


@overlays
def test_rolling_updates_keep_capacity_and_disruption_budgets_select_pods(overlay: str) -> None:
    objects = render(overlay)
    for name in ("gateway", "worker"):
        deployment = one(objects, "Deployment", name)
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)]
    budgets = by_kind(objects, "PodDisruptionBudget")
    for workload in ("gateway", "worker"):
        labels = one(objects, "Deployment", workload)["spec"]["template"]["metadata"]["labels"]
        assert [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)], f"no PDB for {workload}"
    for budget in budgets:
        matched = [labels for labels in pod_labels if selects(budget["spec"]["selector"]["matchLabels"], labels)]
        # The operator labels its pods with the cluster's name.
        operator_pods = [c for c in by_kind(objects, "RabbitmqCluster") if budget["spec"]["selector"]["matchLabels"]
                         == {"app.kubernetes.io/name": c["metadata"]["name"]}]
        assert matched or operator_pods, f"PDB {budget['metadata']['name']} selects no pod"


@overlays
def test_services_and_the_ingress_point_at_declared_ports(overlay: str) -> None:
    objects = render(overlay)
    for service in by_kind(objects, "Service"):
        (workload,) = [w for w in workloads(objects)
                       if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        ports = {p["name"] for c in containers(workload).values() for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']} targets {port['targetPort']}"
    (ingress,) = by_kind(objects, "Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = one(objects, "Service", backend["name"])
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert {h for t in ingress["spec"]["tls"] for h in t["hosts"]} == {r["host"] for r in ingress["spec"]["rules"]}


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


@overlays
def test_the_ingress_lets_the_largest_accepted_body_through(overlay: str) -> None:
    from gateway.settings import GatewaySettings
    from jobs.settings import JobsSettings

    objects = render(overlay)
    gateway_env = environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])
    largest = max(int(gateway_env.get("MAX_BODY_BYTES", GatewaySettings.model_fields["max_body_bytes"].default)),
                  int(gateway_env.get("JOB_MAX_INLINE_BYTES",
                                      JobsSettings.model_fields["job_max_inline_bytes"].default)))
    annotations = one(objects, "Ingress", "gateway")["metadata"]["annotations"]
    assert _bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) >= largest
    timeout = float(gateway_env.get("REQUEST_TIMEOUT_S", GatewaySettings.model_fields["request_timeout_s"].default))
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > timeout


@overlays
def test_our_containers_are_non_root_read_only_and_bounded(overlay: str) -> None:
    objects = render(overlay)
    users = {int(i.args.split(":")[0]) for path in (REPO / "docker").glob("*.Dockerfile")
             for i in parse_dockerfile(path) if i.keyword == "USER"}
    for workload, container in _our_containers(objects):
        pod = workload["spec"]["template"]["spec"]
        security = {**pod["securityContext"], **container.get("securityContext", {})}
        name = f"{workload['metadata']['name']}/{container['name']}"
        assert security["runAsNonRoot"] is True and security["runAsUser"] in users, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} has no {bound}"
        # Read-only root: every folder the processes write is a volume.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, name


@overlays
def test_gateway_processes_fit_the_cpu_limit(overlay: str) -> None:
    objects = render(overlay)
    container = containers(one(objects, "Deployment", "gateway"))["gateway"]
    processes = int(environment(objects, container)["GATEWAY_PROCESSES"])
    limit = container["resources"]["limits"]["cpu"]
    cores = int(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
    assert processes <= cores, f"{processes} processes on {limit} CPU"


@overlays
def test_autoscalers_target_the_deployments(overlay: str) -> None:
    from jobs.routing import model_queue
    from jobs.settings import JobsSettings
    from worker.contract import load_model_class
    from worker.settings import WorkerSettings

    objects = render(overlay)
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway" and hpa["spec"]["minReplicas"] >= 2
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}
    (scaled,) = by_kind(objects, "ScaledObject")
    one(objects, scaled["spec"]["scaleTargetRef"]["kind"], scaled["spec"]["scaleTargetRef"]["name"])
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    assert scaled["spec"]["minReplicaCount"] >= 1, "live traffic needs a worker whatever the queue holds"
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    sidecar_env = environment(objects, _worker_pod(objects)["sidecar"])
    worker_env = environment(objects, _worker_pod(objects)["worker"])
    served = load_model_class(worker_env.get("MODEL", WorkerSettings.model_fields["model"].default)).name
    queue = model_queue(sidecar_env.get("JOB_QUEUE", JobsSettings.model_fields["job_queue"].default), served)
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == queue, (
        f"KEDA watches {trigger['metadata']['queueName']}, the served model's jobs go to {queue}: "
        "run `make kubernetes-model` (deploy/kubernetes/base/served-model.env)")
    one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    # KEDA reads the queue with the same URL the sidecars consume from.
    (auth,) = by_kind(objects, "TriggerAuthentication")
    (host,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "host"]
    assert sidecar_env["AMQP_URL"] == {"secretKeyRef": {"name": host["name"], "key": host["key"]}}


def _policy_allows(policy: dict, labels: dict[str, str], port: int | str) -> bool:
    for rule in policy["spec"]["ingress"]:
        peers = [p for p in rule.get("from", []) if "podSelector" in p and "namespaceSelector" not in p]
        ports = [p["port"] for p in rule.get("ports", [])]
        if any(selects(p["podSelector"]["matchLabels"], labels) for p in peers) and (not ports or port in ports):
            return True
    return False


@overlays
def test_network_policies_let_only_the_gateway_reach_workers_and_the_job_path_reach_the_broker(overlay: str) -> None:
    objects = render(overlay)
    policies = {p["metadata"]["name"]: p for p in by_kind(objects, "NetworkPolicy")}
    gateway_labels = one(objects, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    worker_labels = one(objects, "Deployment", "worker")["spec"]["template"]["metadata"]["labels"]
    worker_policy = policies["worker"]
    assert selects(worker_policy["spec"]["podSelector"]["matchLabels"], worker_labels)
    assert _policy_allows(worker_policy, gateway_labels, "http")
    assert not _policy_allows(worker_policy, {"app.kubernetes.io/name": "anything-else"}, "http")
    pod_peers = [p for r in worker_policy["spec"]["ingress"] for p in r["from"] if "podSelector" in p]
    assert all(selects(p["podSelector"]["matchLabels"], gateway_labels) for p in pod_peers)

    broker = policies["jobs-rabbitmq"]
    broker_labels = broker["spec"]["podSelector"]["matchLabels"]
    made = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)]
    made += [{"app.kubernetes.io/name": c["metadata"]["name"]} for c in by_kind(objects, "RabbitmqCluster")]
    assert any(selects(broker_labels, labels) for labels in made), "the broker policy selects no broker pod"
    # The operator's AMQP port is 5672; the dev broker's Service uses the same.
    for service in (s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "jobs-rabbitmq"):
        assert [p["port"] for p in service["spec"]["ports"] if p["name"] == "amqp"] == [5672]
    for client in (gateway_labels, worker_labels):  # the gateway publishes jobs, the sidecars consume them
        assert _policy_allows(broker, client, 5672)


@overlays
def test_the_gateways_share_rate_limits_through_a_redis_only_they_reach(overlay: str) -> None:
    """Several gateway pods: a key's limit is counted once for all of them, in the Redis REDIS_URL names."""
    objects = render(overlay)
    gateway_labels = one(objects, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    url = urlsplit(environment(objects, containers(one(objects, "Deployment", "gateway"))["gateway"])["REDIS_URL"])
    assert url.scheme == "redis", url.geturl()
    service = one(objects, "Service", url.hostname)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    (redis,) = [w for w in workloads(objects)
                if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate", "one count, not two"
    (container,) = containers(redis).values()
    (declared,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in by_kind(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"],
                                                                         redis_labels)]
    assert _policy_allows(policy, gateway_labels, declared["containerPort"])
    worker_labels = one(objects, "Deployment", "worker")["spec"]["template"]["metadata"]["labels"]
    assert not _policy_allows(policy, worker_labels, declared["containerPort"])


@overlays
def test_metrics_are_scraped_where_the_processes_serve_them(overlay: str) -> None:
    objects = render(overlay)
    for workload in ("gateway", "worker"):
        template = one(objects, "Deployment", workload)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        (main,) = [c for c in containers(one(objects, "Deployment", workload)).values() if c["name"] == workload]
        assert annotations["prometheus.io/port"] == environment(objects, main)["PORT"]
        assert annotations["prometheus.io/path"] == "/metrics"
    for monitor in by_kind(objects, "PodMonitor"):
        ports = {p["name"] for w in workloads(objects)
                 if selects(monitor["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
                 for c in containers(w).values() for p in c.get("ports", [])}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == ports


def test_the_dashboard_configmap_is_the_compose_dashboard() -> None:
    objects = render("cpu")
    data = config_map(objects, "grafana-dashboard-jax-inference-gateway")
    dashboard = REPO / "monitoring/grafana/dashboards/jax-inference-gateway.json"
    assert json.loads(data["jax-inference-gateway.json"]) == json.loads(dashboard.read_text())
    labels = one(objects, "ConfigMap", "grafana-dashboard-jax-inference-gateway")["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"


def test_every_kustomization_file_is_reached_from_an_overlay() -> None:
    """No dead manifests: every YAML under deploy/kubernetes is a kustomization's resource or patch."""
    reached: set[Path] = set()

    def visit(folder: Path) -> None:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        reached.add(folder / "kustomization.yaml")
        for entry in kustomization.get("resources", []) + kustomization.get("components", []):
            path = (folder / entry).resolve()
            visit(path) if path.is_dir() else reached.add(path)
        reached.update((folder / p["path"]).resolve() for p in kustomization.get("patches", []))

    for overlay in ("cpu", "gpu"):
        visit(DEPLOY / "overlays" / overlay)
    files = {p.resolve() for p in DEPLOY.rglob("*.yaml")}
    assert files - {p.resolve() for p in reached} == set()
