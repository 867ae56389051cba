"""Gateway processes share the DICOM port's listening socket: a new association goes to
an idle gateway, not to one already serving (server.open_listener, busy_yield)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from pacs_hub.gateway import server as server_module
from pacs_hub.gateway.server import HubAssociationServer, open_listener
from pacs_hub.listeners import PortUnavailable
from tests.conftest import Hub, start_hub
from tests.procs import children


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def _wait_idle(pids: list[int], timeout: float = 120.0) -> None:
    """Until the gateways have finished starting (no CPU used over half a second)."""
    deadline = time.monotonic() + timeout
    last = _cpu_ticks(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _cpu_ticks(pids)
        if now == last:
            return
        last = now
    raise AssertionError("the gateways kept busy")


def _owner(hub: Hub, client_port: int) -> int:
    """The hub process holding the server side of the connection from ``client_port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(f.split(":")[1], 16) for f in fields[1:3])
        if (local_port, remote_port) == (hub.dicom_port, client_port):
            inodes.add(f"socket:[{fields[9]}]")
    for pid in children(hub.process.pid):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no hub process holds the connection from port {client_port}")


def _echoing(hub: Hub) -> Association:
    ae = AE(ae_title="PORT_TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title=hub.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    return assoc


def test_a_new_association_goes_to_an_idle_gateway(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    hub = start_hub(tmp_path / "data", processes=2)  # healthy: both gateways accept
    try:
        _wait_idle(children(hub.process.pid))
        first = _echoing(hub)
        second = _echoing(hub)
        third = _echoing(hub)  # both busy now: one of them takes it all the same
        owners = [_owner(hub, a.local["port"]) for a in (first, second, third)]
        for assoc in (first, second, third):
            assoc.release()
    finally:
        hub.stop()
    assert owners[0] != owners[1]
    assert owners[2] in owners[:2]


def test_a_second_listener_on_the_port_is_refused() -> None:
    """A second hub on the same port fails (no SO_REUSEPORT sharing the port with it)."""
    old = open_listener("127.0.0.1", 0)
    port = old.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(PortUnavailable, match=f"DICOM port 127.0.0.1:{port}: another"):
            open_listener("127.0.0.1", port, wait=0.5)
        assert time.monotonic() - started >= 0.5  # it waited for the port first
    finally:
        old.close()


def test_a_restarted_hub_waits_for_its_old_gateways_to_let_go_of_the_port() -> None:
    """After a kill -9 of the hub, its gateways keep the listening socket until they
    exit; the restarted hub waits for the port instead of failing at once."""
    old = open_listener("127.0.0.1", 0)
    port = old.getsockname()[1]
    closing = threading.Timer(0.5, old.close)  # the old gateways exiting
    closing.start()
    try:
        new = open_listener("127.0.0.1", port, wait=30)
        new.close()
    finally:
        closing.cancel()
        old.close()


def test_only_associations_not_ending_make_a_gateway_yield(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An association released or aborted lingers while pynetdicom stops its threads;
    a gateway holding only such ones takes the next connection without waiting. One
    still negotiating counts: simultaneous clients go to different gateways."""
    slept: list[float] = []
    monkeypatch.setattr(server_module.time, "sleep", slept.append)
    listener = open_listener("127.0.0.1", 0)
    gateway = object.__new__(HubAssociationServer)
    gateway.listener = gateway.socket = listener
    gateway.ssl_context = None
    flags = {"is_released": False, "is_aborted": False, "is_rejected": False}
    released = SimpleNamespace(**(flags | {"is_released": True}))
    aborted = SimpleNamespace(**(flags | {"is_aborted": True}))
    negotiating = SimpleNamespace(**flags)  # not established yet: it counts
    cases = (([released, aborted], []), ([released, negotiating], [0.002]))
    try:
        for active, expected in cases:
            gateway.ae = SimpleNamespace(active_associations=active)  # type: ignore[assignment]
            slept.clear()
            client = socket.create_connection(listener.getsockname())
            accepted, _address = gateway.get_request()
            accepted.close()
            client.close()
            assert slept == expected
    finally:
        listener.close()
