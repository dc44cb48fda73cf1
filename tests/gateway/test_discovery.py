"""WORKERS entries expand to one backend per resolved address (a faked resolver)."""

from __future__ import annotations

from gateway.discovery import WorkerDiscovery


class FakeResolver:
    def __init__(self, answers: dict[str, list[str] | OSError]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        answer = self.answers[host]
        if isinstance(answer, OSError):
            raise answer
        return answer


async def test_a_name_with_several_addresses_becomes_several_backends() -> None:
    resolver = FakeResolver({"worker": ["10.0.0.2", "10.0.0.3", "10.0.0.4"]})
    discovery = WorkerDiscovery(["worker:8000"], resolver)
    assert await discovery.expand() == [
        ("http://10.0.0.2:8000", "worker:8000"),
        ("http://10.0.0.3:8000", "worker:8000"),
        ("http://10.0.0.4:8000", "worker:8000"),
    ]


async def test_literal_addresses_are_not_resolved() -> None:
    resolver = FakeResolver({})
    discovery = WorkerDiscovery(["127.0.0.1:8001", "http://127.0.0.1:8002/"], resolver)
    assert [url for url, _ in await discovery.expand()] == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert resolver.asked == []


async def test_scaling_is_seen_on_the_next_resolution() -> None:
    resolver = FakeResolver({"worker": ["10.0.0.2"]})
    discovery = WorkerDiscovery(["worker:8000"], resolver)
    assert len(await discovery.expand()) == 1
    resolver.answers["worker"] = ["10.0.0.2", "10.0.0.5"]
    assert len(await discovery.expand()) == 2


async def test_a_failed_lookup_keeps_the_last_answer() -> None:
    resolver = FakeResolver({"worker": ["10.0.0.2", "10.0.0.3"]})
    discovery = WorkerDiscovery(["worker:8000"], resolver)
    first = await discovery.expand()
    resolver.answers["worker"] = OSError("temporary failure in name resolution")
    assert await discovery.expand() == first
