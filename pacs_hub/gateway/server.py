"""The hub's DICOM application entity: which services it offers and how it listens.

Presentation contexts (PS3.8 7.1.1.13): Verification, every Storage SOP class
(PS3.4 B.5) with every transfer syntax pynetdicom knows (stored as received, so no
codec is needed), Patient Root and Study Root Query/Retrieve FIND, MOVE and GET
(PS3.4 C.6), and Storage Commitment Push Model (PS3.4 J): N-ACTION as the SCP
(:mod:`pacs_hub.gateway.commitment`), N-EVENT-REPORT for the hub's own requests as the
SCU (a PACS reporting on a new association, :mod:`pacs_hub.backup.commit`).

Several gateway processes, each with its own pynetdicom AE, accept on the DICOM port
from one listening socket opened by the hub (:func:`open_listener`): each new
association goes to the process whose acceptor is first to take it, so an idle
process takes it before a busy one. (With ``SO_REUSEPORT`` the kernel would pick
the process by a hash of the peer's address: two associations out of two landed on
the same process, one core of two idle, about half the time; and a second hub could
bind the same port.) A gateway started on its own (tests, stand-in ports) binds its
own socket with ``SO_REUSEPORT``. Every
socket the hub opens or accepts has ``TCP_NODELAY`` set, else each DIMSE message
waits on Nagle's algorithm (~40 ms).

Of the transfer syntaxes a peer proposes for a presentation context, the hub accepts
the first one it supports, in the *peer's* order (PS3.8 9.3.3.2: the acceptor picks
one of those proposed; peers such as dcmtk list their preference first). pynetdicom
would otherwise use
the hub's order (Implicit VR Little Endian first); since instances go out exactly as
stored, a C-GET (PS3.4 C.4.3) of an explicit-VR or compressed instance would then
find no usable context.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import AE, acse, evt
from pynetdicom import sop_class as sc
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from pacs_hub import listeners, metrics
from pacs_hub.backup import commit, standin
from pacs_hub.gateway import (
    access,
    commitment,
    pdata,
    pdu_reader,
    reactor,
    relayed_answer,
    store_request,
)
from pacs_hub.gateway.callers import CallerPolicy
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import SUCCESS

LOGGER = logging.getLogger(__name__)

QUERY_RETRIEVE = (
    sc.PatientRootQueryRetrieveInformationModelFind,
    sc.StudyRootQueryRetrieveInformationModelFind,
    sc.PatientRootQueryRetrieveInformationModelMove,
    sc.StudyRootQueryRetrieveInformationModelMove,
    sc.PatientRootQueryRetrieveInformationModelGet,
    sc.StudyRootQueryRetrieveInformationModelGet,
)


def enable_tcp_nodelay_on_requests() -> None:
    """Make every association this process *requests* set TCP_NODELAY.

    pynetdicom creates requestor sockets in ``AssociationSocket._create_socket`` and
    offers no option for socket flags, so the method is wrapped once per process.
    """
    original = AssociationSocket._create_socket
    if getattr(original, "_pacs_hub_nodelay", False):
        return

    @functools.wraps(original)
    def create(self: AssociationSocket, address: Any) -> socket.socket:
        sock: socket.socket = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    create._pacs_hub_nodelay = True  # type: ignore[attr-defined]
    AssociationSocket._create_socket = create  # type: ignore[method-assign]


def prepare_associations() -> None:
    """Set pynetdicom up in this process before it requests or accepts an association.

    TCP_NODELAY on requested sockets (:func:`enable_tcp_nodelay_on_requests`), the
    event-driven reactors (:mod:`~pacs_hub.gateway.reactor`, which also close
    pynetdicom's hand-over race that let a reactor take the response a ``send_*``
    caller waited for), the direct P-DATA path (:mod:`~pacs_hub.gateway.pdata`) and
    the direct reading of C-STORE responses (:mod:`~pacs_hub.gateway.store_response`)
    and of C-STORE requests (:mod:`~pacs_hub.gateway.store_request`), PDUs read in one
    piece (:mod:`~pacs_hub.gateway.pdu_reader`).
    Every hub process that opens associations calls it first: the gateways, the main
    process (routing, backfill, prefetch, federated QIDO) and the CLI (restore).
    Idempotent.
    """
    enable_tcp_nodelay_on_requests()
    quiet_pynetdicom_handlers()  # else the direct paths stand aside for the log handlers
    reactor.install()
    pdata.install()
    store_request.install()  # C-STORE requests and responses read directly
    pdu_reader.install()


def accept_proposed_transfer_syntax_order() -> None:
    """Accept, per presentation context, the first *proposed* transfer syntax we support.

    pynetdicom negotiates in ``acse.negotiate_as_acceptor`` by the acceptor's order and
    offers no option for it, so its result is re-ordered, once per process.
    """
    original = acse.negotiate_as_acceptor  # type: ignore[attr-defined]
    if getattr(original, "_pacs_hub_order", False):
        return

    @functools.wraps(original)
    def negotiate(rq_contexts: Any, ac_contexts: Any, roles: Any = None) -> Any:
        result, ac_roles = original(rq_contexts, ac_contexts, roles)
        ours = (
            ac_contexts.transfer_syntaxes
            if isinstance(ac_contexts, AcceptorContexts)
            else {str(cx.abstract_syntax): frozenset(cx.transfer_syntax) for cx in ac_contexts}
        )
        proposed = {cx.context_id: cx.transfer_syntax for cx in rq_contexts}
        for cx in result:
            supported = ours.get(str(cx.abstract_syntax), frozenset())
            first = [ts for ts in proposed.get(cx.context_id, []) if ts in supported][:1]
            if cx.result == 0x00 and first:
                cx.transfer_syntax = first
        return result, ac_roles

    negotiate._pacs_hub_order = True  # type: ignore[attr-defined]
    acse.negotiate_as_acceptor = negotiate  # type: ignore[attr-defined]


class AcceptorContexts(list[PresentationContext]):
    """The server's supported contexts, shared by its associations, not copied.

    pynetdicom gives every accepted association ``deepcopy(server.contexts)``
    (``RequestHandler._create_association``). The hub supports every storage SOP
    class with every transfer syntax: 178 contexts holding ~7,700 UIDs, whose
    deepcopy cost ~65 ms of CPU per association (every storescu, findscu, movescu),
    and a copy of each context still ~1 ms. An association only *reads* them, once,
    in ``presentation.negotiate_as_acceptor`` (which builds new result contexts),
    and the hub never changes a server's contexts after it starts: every association
    gets this same list (``__deepcopy__`` returns it).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> AcceptorContexts:
        return self

    @functools.cached_property
    def transfer_syntaxes(self) -> dict[str, frozenset[str]]:
        """Abstract syntax -> the transfer syntaxes supported for it."""
        return {str(cx.abstract_syntax): frozenset(cx.transfer_syntax) for cx in self}


def quiet_pynetdicom_handlers() -> None:
    """Skip pynetdicom's standard logging handlers when their log would be dropped.

    Each association binds handlers that format a log line for every PDU and DIMSE
    message sent or received (``_config.LOG_HANDLER_LEVEL``); the hub keeps the
    ``pynetdicom`` logger at WARNING unless it runs at DEBUG, so below INFO the
    work is thrown away. Set once per process, before any association.
    """
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        pynetdicom._config.LOG_HANDLER_LEVEL = "none"


def open_listener(host: str, port: int, wait: float = 0.0) -> socket.socket:
    """The DICOM port's listening socket, to be shared by every gateway process.

    Claimed for this hub alone (:func:`pacs_hub.listeners.claim`: a second hub on the
    same port fails to start; a hub restarted right after a ``kill -9`` waits up to
    ``wait`` seconds for its old gateways to let go). Non-blocking: every gateway's
    acceptor wakes for a new connection and those that lose the race to accept it go
    back to waiting.
    """
    listener = listeners.claim("DICOM", host, port, backlog=128, wait=wait)
    listener.setblocking(False)
    return listener


class HubAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, sharing its port and with TCP_NODELAY on."""

    listener: socket.socket | None = None
    """A listening socket opened by the hub, shared with other gateway processes;
    None: bind one of this server's own (``SO_REUSEPORT``)."""

    companions: dict[int, tuple[str, ThreadedAssociationServer]]
    """Servers of the same gateway on stand-ins' own ports: port -> (establishment, server)."""
    unusable: set[tuple[int, str]]
    """Stand-in ports that could not be listened on (said once in the log)."""

    def shutdown(self) -> None:
        for _code, companion in getattr(self, "companions", {}).values():
            companion.shutdown()
        super().shutdown()

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.listener is not None:
            self.socket.close()
            self.socket = self.listener
            self.server_address = self.listener.getsockname()
            return
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def server_activate(self) -> None:
        if self.listener is None:
            super().server_activate()  # a shared listener is listening already

    def server_close(self) -> None:
        if self.listener is None:
            super().server_close()
        else:
            self.listener.close()  # no shutdown(): the other gateways still accept on it

    handshake_timeout = 10.0
    """Seconds a TLS client has to finish its handshake (pynetdicom does it in the
    accept loop: a client that connects and says nothing would otherwise hold it)."""

    busy_yield = 0.002
    """Seconds a gateway serving associations waits, per association (up to four), before
    taking a new one from a shared listener: an idle gateway takes it first. An
    association being negotiated counts (two storescu starting together must land on two
    gateways); one released, aborted or rejected does not: it lingers ~10 ms while
    pynetdicom stops its threads, and a client associating again right away (a viewer's
    next query, a PACS's next study) would wait for nothing."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.listener is not None:
            busy = sum(1 for assoc in self.ae.active_associations if _serving(assoc))
            if busy:
                time.sleep(self.busy_yield * min(busy, 4))
        if self.ssl_context is None:
            client, address = super().get_request()
            client.setblocking(True)  # from a non-blocking shared listener it may not be
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return client, address
        assert self.socket is not None
        raw, address = self.socket.accept()
        raw.setblocking(True)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(self.handshake_timeout)
        try:
            client = self.ssl_context.wrap_socket(raw, server_side=True)
        except BaseException:
            raw.close()
            raise
        client.settimeout(None)
        return client, address


def _serving(assoc: Any) -> bool:
    """An association negotiating or established, not one ending (see busy_yield)."""
    ending = assoc.is_released or assoc.is_aborted or assoc.is_rejected
    return not (ending or getattr(assoc, "_kill", False))


def build_ae(ctx: GatewayContext) -> AE:
    """The application entity with every supported presentation context."""
    settings = ctx.settings
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.maximum_associations = 64
    transfer_syntaxes = list(pynetdicom.ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(sc.Verification)
    for uid in sc._STORAGE_CLASSES.values():
        ae.add_supported_context(uid, transfer_syntaxes, scu_role=True, scp_role=True)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid)
    ae.add_supported_context(sc.StorageCommitmentPushModel)
    ae.require_called_aet = False
    return ae


def handlers(ctx: GatewayContext, dedicated: str = "") -> list[evt.EventHandlerType]:
    """Event handlers bound to the SCP, each receiving the gateway context
    (``dedicated``: on the port of establishment ``dedicated``'s stand-in)."""
    on_port = [(evt.EVT_REQUESTED, standin.on_dedicated_request, [ctx, dedicated])]
    return [
        *CallerPolicy.for_gateway(ctx).handlers(),  # unknown callers: PS3.8 9.3.4
        *(on_port if dedicated else []),  # after the caller policy
        (evt.EVT_C_ECHO, counted("C-ECHO", handle_echo), []),
        # stand-in: marked for return
        (evt.EVT_C_STORE, counted("C-STORE", standin.handle_store), [ctx, dedicated]),
        # stand-in, local or federated
        (evt.EVT_C_FIND, counted("C-FIND", standin.handle_find), [ctx, dedicated]),
        # stand-in: its establishment
        (evt.EVT_C_MOVE, counted("C-MOVE", standin.handle_move), [ctx, dedicated]),
        (evt.EVT_C_GET, counted("C-GET", standin.handle_get), [ctx, dedicated]),
        (evt.EVT_N_ACTION, counted("N-ACTION", commitment.handle_n_action), [ctx]),
        # restores: the PACS's storage commitment reports
        (
            evt.EVT_N_EVENT_REPORT,
            counted("N-EVENT-REPORT", commit.handle_n_event_report),
            [ctx.settings],
        ),
    ]


def counted(service: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler``, each request it gets counted in the metrics (:mod:`pacs_hub.metrics`),
    and its answer's status when it answers at once (C-FIND, C-MOVE, C-GET answer
    through a generator, not consumed here)."""

    @functools.wraps(handler)
    def counting(event: evt.Event, *args: Any) -> Any:
        metrics.dimse_request(service)
        answer = handler(event, *args)
        code = metrics.with_status(answer)
        if code is not None:
            metrics.dimse_response(service, code)
        return answer

    return counting


def handle_echo(event: evt.Event) -> int:
    """C-ECHO (PS3.4 A.4): always Success."""
    return SUCCESS


def serve_dicom(ctx: GatewayContext, listener: socket.socket | None = None) -> HubAssociationServer:
    """Listen on the configured host and DICOM port in a background thread.

    ``listener``: the port's socket from :func:`open_listener`, shared with the other
    gateway processes; by default the server binds its own. Returns the server;
    ``server.shutdown()`` stops it.
    """
    prepare_associations()
    relayed_answer.install()
    accept_proposed_transfer_syntax_order()
    # Identifiers carry patient names and IDs: never log them, even at DEBUG.
    pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False
    ae = build_ae(ctx)
    server = _listen(ae, ctx, ctx.settings.dicom_port, listener=listener)
    server.companions, server.unusable = {}, set()
    sync_standin_ports(ctx, server)
    return server


def sync_standin_ports(ctx: GatewayContext, server: HubAssociationServer) -> None:
    """Listen on every stand-in's own port as configured now (PS3.8 9.1: one more
    acceptor per port), and stop listening on those removed or changed.

    Called at start and then every few seconds by the gateway process, so a port set
    with ``pacs-hub backup standin CODE on --port N`` opens without a restart.
    """
    wanted = {port: code for code, port in standin.dedicated_ports(ctx.settings).items()}
    for port, (code, companion) in list(server.companions.items()):
        if wanted.get(port) != code:
            companion.shutdown()
            del server.companions[port]
            LOGGER.info("stand-in port %d of %s: closed", port, code)
    for port, code in wanted.items():
        if port in server.companions:
            continue
        try:
            server.companions[port] = (code, _listen(server.ae, ctx, port, code))
        except OSError as exc:  # the hub serves on; the stand-in's port is said unusable
            if (port, code) not in server.unusable:
                LOGGER.error("stand-in port %d of %s: cannot listen (%s)", port, code, exc)
            server.unusable.add((port, code))


def _listen(
    ae: AE,
    ctx: GatewayContext,
    port: int,
    dedicated: str = "",
    listener: socket.socket | None = None,
) -> HubAssociationServer:
    """One server of ``ae`` on ``port`` (``dedicated``: a stand-in's own), started;
    on ``listener`` when given (shared with the other gateway processes)."""
    address = (ctx.settings.host, port)
    server_class: type[HubAssociationServer] = HubAssociationServer
    if listener is not None:  # pynetdicom makes the server from its class alone
        server_class = type("SharedPortServer", (HubAssociationServer,), {"listener": listener})
    server = ae.make_server(
        address,
        evt_handlers=handlers(ctx, dedicated),
        server_class=server_class,
        ssl_context=access.tls_context(ctx.settings),  # TLS when PACS_HUB_DICOM_TLS_* set
    )
    assert isinstance(server, HubAssociationServer)
    server.contexts = AcceptorContexts(server.contexts)
    ae._servers.append(server)  # as start_server does; server.shutdown() removes it
    name = f"dicom-acceptor-{dedicated}" if dedicated else "dicom-acceptor"
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    LOGGER.info(
        "DICOM gateway %s listening on %s:%d%s",
        ctx.settings.ae_title,
        *address,
        f" as the stand-in of {dedicated}" if dedicated else "",
    )
    return server
