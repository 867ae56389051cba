"""Running the hub: DICOM gateway processes and the HTTP server, with clean shutdown."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from types import FrameType

import uvicorn

from pacs_hub.config import Settings
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.server import serve_dicom
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.web.app import create_app

LOGGER = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    """Log to stderr; pynetdicom's per-PDU chatter only at DEBUG."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def run_gateway(settings: Settings) -> None:
    """Body of one gateway process: listen until SIGTERM or SIGINT."""
    configure_logging(settings.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = GatewayContext.open(settings)
    server = serve_dicom(ctx)
    stop.wait()
    server.shutdown()
    ctx.database.dispose()


def prepare_storage(settings: Settings) -> Database:
    """Create the data folder, migrate the index, clean temp files of a crash."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.index_url, run_migrations=True)
    BlobStore(settings.data_dir).clean_temp()
    return database


def serve(settings: Settings) -> None:
    """Run the hub in the foreground until SIGTERM/SIGINT."""
    configure_logging(settings.log_level)
    database = prepare_storage(settings)
    spawn = multiprocessing.get_context("spawn")
    gateways: list[multiprocessing.context.SpawnProcess] = []
    for _ in range(settings.effective_gateway_processes):
        proc = spawn.Process(target=run_gateway, args=(settings,), name="pacs-hub-gateway")
        proc.start()
        gateways.append(proc)
    print(
        f"PACS Hub ready: AE title {settings.ae_title}, DICOM {settings.host}:{settings.dicom_port}"
        f" ({len(gateways)} gateway process(es)), HTTP http://{settings.host}:{settings.http_port}/"
        f", data in {settings.data_dir.resolve()}",
        flush=True,
    )
    app = create_app(settings, database, lambda: sum(p.is_alive() for p in gateways))
    try:
        uvicorn.run(app, host=settings.host, port=settings.http_port, log_level="warning")
    finally:
        for proc in gateways:
            proc.terminate()
        for proc in gateways:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        database.dispose()
        LOGGER.info("PACS Hub stopped")
