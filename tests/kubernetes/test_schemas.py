"""Every rendered object passes schema validation: Kubernetes' own schemas, and hand-written ones for the rest.

Built-in kinds are checked by `kubernetes-validate` (the API's JSON schemas, strict: an unknown
field is an error) for KUBERNETES_VERSION. Custom resources (KEDA, the RabbitMQ operator, the
Prometheus Operator) are checked against tests/kubernetes/schemas/: hand-written subsets of those
operators' CRD schemas, covering the fields these manifests use, as strict (the API server would
silently drop an unknown field of a custom resource, so a typo would otherwise pass).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.containers.support import require_tool
from tests.kubernetes.support import OVERLAYS, overlays, render

#: A current Kubernetes release; kubernetes-validate ships the schemas of each minor version.
KUBERNETES_VERSION = "1.37"
SCHEMAS = Path(__file__).parent / "schemas"
#: In a broken-object case: remove the field instead of setting it.
REMOVE = object()


def _validator():
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    require_tool(kubernetes_validate, "kubernetes-validate")
    return kubernetes_validate


@functools.cache
def _custom_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> its schema, from the files in tests/kubernetes/schemas/."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        key = (document["apiVersion"], document["kind"])
        assert key not in schemas, f"{path.name}: a second schema for {key}"
        schemas[key] = document["schema"]
    return schemas


def _objects(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `type: object` node of a schema, with its path."""
    if schema.get("type") == "object":
        yield path or "(root)", schema
    for name, child in schema.get("properties", {}).items():
        yield from _objects(child, f"{path}.{name}".lstrip("."))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _objects(schema[key], f"{path}[]")
    for child in schema.get("anyOf", []):
        yield from _objects(child, path)


def validate(document: dict[str, Any]) -> list[str]:
    """The schema errors of one object; [] when it is valid."""
    import jsonschema

    kubernetes_validate = _validator()
    key = (document["apiVersion"], document["kind"])
    schemas = _custom_schemas()
    if key not in schemas:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [f"{'.'.join(map(str, error.path))}: {error.message}"]
        return []
    validator = jsonschema.Draft7Validator(schemas[key])
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]
    # As in a CRD, the schema says only `metadata: object`: check the metadata as the API would (ObjectMeta).
    try:
        meta_only = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
        kubernetes_validate.validate(meta_only, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        errors.append(f"metadata.{'.'.join(map(str, error.path))}: {error.message}")
    return errors


@overlays
def test_every_rendered_object_passes_its_schema(overlay: str) -> None:
    failures = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in render(overlay)}
    assert not {name: errors for name, errors in failures.items() if errors}


@overlays
def test_custom_resources_have_a_schema(overlay: str) -> None:
    kubernetes_validate = _validator()
    schemas = _custom_schemas()
    for document in render(overlay):
        if (document["apiVersion"], document["kind"]) in schemas:
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{document['kind']} ({document['apiVersion']}) has no schema: write one in schemas/")


def test_every_schema_describes_a_rendered_kind() -> None:
    rendered = {(o["apiVersion"], o["kind"]) for overlay in OVERLAYS for o in render(overlay)}
    assert set(_custom_schemas()) - rendered == set()


def test_the_schemas_are_strict_json_schemas() -> None:
    """Each schema is valid, and every object in it either lists its fields (refusing others) or is a typed map."""
    import jsonschema

    for key, schema in _custom_schemas().items():
        jsonschema.Draft7Validator.check_schema(schema)
        assert schema["properties"]["metadata"] == {"type": "object"}, key
        for path, node in _objects(schema):
            if path == "metadata":
                continue
            if "properties" in node:
                assert node.get("additionalProperties") is False, (key, path)
            else:
                assert isinstance(node.get("additionalProperties"), dict), (key, path)


@pytest.mark.parametrize(("kind", "name", "path", "value", "expected"), [
    pytest.param("Deployment", "worker", ("spec", "replicas"), "two", "integer", id="built-in: type"),
    pytest.param("Deployment", "worker",
                 ("spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet", "pathh"), "/health",
                 "pathh", id="built-in: unknown field"),
    pytest.param("ScaledObject", "worker", ("spec", "maxReplicaCount"), "eight", "integer", id="ScaledObject: type"),
    pytest.param("ScaledObject", "worker", ("spec", "triggers", 0, "metadata", "queueName"), 5, "string",
                 id="ScaledObject: trigger metadata are strings"),
    pytest.param("ScaledObject", "worker", ("spec", "minReplicas"), 2, "minReplicas",
                 id="ScaledObject: unknown field"),
    pytest.param("ScaledObject", "worker",
                 ("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior", "scaleDown",
                  "stabilisationWindowSeconds"), 600, "stabilisationWindowSeconds",
                 id="ScaledObject: unknown nested field"),
    pytest.param("ScaledObject", "worker", ("spec", "scaleTargetRef", "name"), REMOVE, "'name' is a required",
                 id="ScaledObject: required field"),
    pytest.param("ScaledObject", "worker", ("metadata", "lables"), {"a": "b"}, "lables",
                 id="ScaledObject: metadata as ObjectMeta"),
    pytest.param("TriggerAuthentication", "jobs-rabbitmq", ("spec", "secretTargetRef", 0, "paramater"), "host",
                 "paramater", id="TriggerAuthentication: unknown field"),
    pytest.param("RabbitmqCluster", "jobs-rabbitmq", ("sepc",), {}, "sepc", id="RabbitmqCluster: unknown top field"),
    pytest.param("RabbitmqCluster", "jobs-rabbitmq", ("spec", "persistance"), {"storage": "20Gi"}, "persistance",
                 id="RabbitmqCluster: unknown field"),
    pytest.param("RabbitmqCluster", "jobs-rabbitmq", ("spec", "resources", "limits", "memory"), "2 GB", "2 GB",
                 id="RabbitmqCluster: quantity"),
    pytest.param("PodMonitor", "jax-inference-gateway", ("spec", "podMetricsEndpoints", 0, "intervall"), "10s",
                 "intervall", id="PodMonitor: unknown field"),
    pytest.param("PodMonitor", "jax-inference-gateway", ("spec", "podMetricsEndpoints", 0, "interval"),
                 "10 seconds", "10 seconds", id="PodMonitor: duration"),
])
def test_the_validation_catches_a_broken_object(kind: str, name: str, path: tuple, value: object,
                                                expected: str) -> None:
    """The checks above can fail: a wrong type, an unknown or a missing field, in built-in and custom resources."""
    objects = render("gpu")
    document = copy.deepcopy(next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name))
    assert validate(document) == []
    node = document
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    if value is REMOVE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    errors = validate(document)
    assert errors and expected in " ".join(errors), errors
