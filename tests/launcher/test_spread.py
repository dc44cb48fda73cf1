"""The launcher's sidecars spread large jobs through its gateway (SIDECAR_SPREAD_URL) unless the user set it."""

from __future__ import annotations

import argparse

from launcher.__main__ import build_children
from launcher.supervisor import Child

ARGS = argparse.Namespace(workers=2, port=9090, host="0.0.0.0", no_sidecars=False, gateway_processes=1)


def _by_role(environ: dict[str, str]) -> tuple[list[Child], Child]:
    children = build_children(ARGS, [], environ=environ)
    return [c for c in children if c.argv[-1] == "jobs.sidecar"], next(c for c in children if c.argv[-1] == "gateway")


def test_sidecars_spread_through_the_launcher_s_gateway() -> None:
    sidecars, gateway = _by_role({})
    assert len(sidecars) == 2
    assert all(s.env["SIDECAR_SPREAD_URL"] == "http://127.0.0.1:9090" for s in sidecars)
    assert all("WORKER_API_KEY" not in s.env for s in sidecars) and "API_KEYS" not in gateway.env


def test_the_user_s_setting_wins_even_empty() -> None:
    for value in ("http://elsewhere:8080", ""):
        sidecars, _ = _by_role({"SIDECAR_SPREAD_URL": value})
        assert all("SIDECAR_SPREAD_URL" not in s.env for s in sidecars)  # the inherited environment's


def test_with_api_keys_the_sidecars_get_a_key_the_gateway_takes() -> None:
    sidecars, gateway = _by_role({"API_KEYS": "sha256:abc"})
    key = sidecars[0].env["WORKER_API_KEY"]
    assert all(s.env["WORKER_API_KEY"] == key for s in sidecars) and len(key) >= 32
    assert gateway.env["API_KEYS"] == f"sha256:abc,{key}"
    sidecars, gateway = _by_role({"API_KEYS": "sha256:abc", "WORKER_API_KEY": "mine"})
    assert all("WORKER_API_KEY" not in s.env for s in sidecars) and "API_KEYS" not in gateway.env


def test_with_admin_keys_alone_the_sidecars_still_get_a_key() -> None:
    sidecars, gateway = _by_role({"ADMIN_API_KEYS": "sha256:abc"})
    assert gateway.env["API_KEYS"] == sidecars[0].env["WORKER_API_KEY"]


def test_the_gateway_and_its_workers_share_an_admin_token() -> None:
    children = build_children(ARGS, [], environ={})
    sidecars = [c for c in children if c.argv[-1] == "jobs.sidecar"]
    gateway = next(c for c in children if c.argv[-1] == "gateway")
    workers = [c for c in children if c.argv[-1] == "worker"]
    tokens = {child.env.get("WORKER_ADMIN_TOKEN") for child in [*workers, gateway]}
    assert len(workers) == 2 and len(tokens) == 1 and None not in tokens
    assert all("WORKER_ADMIN_TOKEN" not in s.env for s in sidecars)
    mine = build_children(ARGS, [], environ={"WORKER_ADMIN_TOKEN": "t"})
    assert all("WORKER_ADMIN_TOKEN" not in child.env for child in mine)  # they inherit the user's
