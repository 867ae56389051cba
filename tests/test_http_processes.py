"""The hub's HTTP processes (PACS_HUB_HTTP_PROCESSES): several interpreters serve the
HTTP port, a sign-in started in one ends in another, a dead one is replaced."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import Hub, start_hub
from tests.procs import (
    ESTABLISHED,
    kill_one_and_wait_for_another,
    listening_children,
    socket_inodes,
    tcp_sockets,
)

PASSWORD = "correct horse battery staple"


def http_processes(hub: Hub) -> list[int]:
    """The hub's children that hold its HTTP port's listening socket."""
    return listening_children(hub.process.pid, hub.http_port)


def serving_process(hub: Hub, client: httpx.Client) -> int:
    """The process at the other end of ``client``'s (kept-alive) connection."""
    answer = client.get("/health")
    assert answer.status_code == 200
    client_port = answer.extensions["network_stream"].get_extra_info("client_addr")[1]
    inodes = {
        inode
        for state, remote, inode in tcp_sockets(hub.http_port)
        if state == ESTABLISHED and remote == client_port
    }
    owners = [p for p in http_processes(hub) if socket_inodes(p) & inodes]
    assert len(owners) == 1, owners
    return owners[0]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(
        tmp_path_factory.mktemp("http") / "data",
        PACS_HUB_HTTP_PROCESSES="2",
        PACS_HUB_AUTH_REQUIRED="true",
    )
    try:
        running.cli("users", "add", "rad", "--role", "radiologist", "--password", PASSWORD)
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def clients_on_two_processes(hub: Hub) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two kept-alive clients whose connections two different HTTP processes serve."""
    with httpx.Client(base_url=hub.url, timeout=30) as first:
        served = serving_process(hub, first)
        for _ in range(50):
            with httpx.Client(base_url=hub.url, timeout=30) as other:
                if serving_process(hub, other) != served:
                    yield first, other
                    return
        raise AssertionError("fifty connections in a row went to the same HTTP process")


def test_the_hub_serves_http_from_the_processes_asked_for(hub: Hub) -> None:
    assert len(http_processes(hub)) == 2
    with clients_on_two_processes(hub) as (first, other):
        for client in (first, other):
            health = client.get("/health").json()
            assert health["status"] == "ok"
            assert health["gateway_processes"] == {"alive": 1, "expected": 1}


def test_a_sign_in_started_in_one_process_ends_in_the_other(hub: Hub) -> None:
    """The web sign-in's state and the authorization code live in the index: each step
    of the flow is sent to the other process than the step before."""
    with clients_on_two_processes(hub) as (first, other):
        form = first.get("/auth/login", params={"next": "/auth/userinfo"})
        assert form.status_code == 303
        authorize = urlsplit(form.headers["location"])
        params = {k: v[0] for k, v in parse_qs(authorize.query).items()}
        answer = other.post(
            authorize.path, data={**params, "username": "rad", "password": PASSWORD}
        )
        assert answer.status_code == 303, answer.text
        callback = first.get(answer.headers["location"])
        assert callback.status_code == 303, callback.text
        assert callback.headers["location"] == "/auth/userinfo"
        other.cookies.update(callback.cookies)  # the session cookie set by the callback
        me = other.get("/auth/userinfo")
        assert me.status_code == 200 and me.json()["sub"] == "rad"
        replay = other.get(answer.headers["location"])  # the same state and code again
        assert replay.status_code == 400


def test_a_dead_http_process_is_replaced(hub: Hub) -> None:
    killed = kill_one_and_wait_for_another(hub.process.pid, hub.http_port, "HTTP")
    with httpx.Client(base_url=hub.url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
    log = next(hub.data_dir.parent.glob(f"hub-{hub.http_port}.log")).read_text()
    assert f"HTTP process {killed} exited with -9 after" in log
