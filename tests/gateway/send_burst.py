"""Many C-STOREs sent by the hub's pynetdicom (its reactors installed) to dcmtk storescp.

Run as ``python -m tests.gateway.send_burst SENDS`` by test_network_layer: the
reactors are patched into the process that runs this, not into the test process.
Four associations in four threads each send SENDS tiny instances; prints a JSON
object with the number sent and the number whose response never came (the
DIMSE timeout expired).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from pacs_hub.gateway import pdata, reactor
from pacs_hub.gateway.server import enable_tcp_nodelay_on_requests, quiet_pynetdicom_handlers
from tests.conftest import dcmtk, free_port, wait_until

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ASSOCIATIONS = 4
DIMSE_TIMEOUT = 10


def _instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "BURST"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _send(port: int, sends: int, counts: dict[str, int], lock: threading.Lock) -> None:
    ae = AE(ae_title="BURST")
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.add_requested_context(SECONDARY_CAPTURE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port)
    for _ in range(sends):
        status = assoc.send_c_store(_instance())
        with lock:
            counts["sent"] += 1
            if not status or status.Status != 0:
                counts["lost"] += 1
        if not assoc.is_established:
            assoc = ae.associate("127.0.0.1", port)
    assoc.release()


def _listening(port: int) -> bool:
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port)
    if assoc.is_established:
        assoc.release()
    return bool(assoc.is_released)


def main(sends: int) -> None:
    enable_tcp_nodelay_on_requests()
    reactor.install()
    pdata.install()
    quiet_pynetdicom_handlers()
    env = dict(os.environ, TCP_NODELAY="1")
    ports = [free_port() for _ in range(ASSOCIATIONS)]
    peers = [
        subprocess.Popen([dcmtk("storescp"), "--ignore", str(port)], env=env) for port in ports
    ]
    counts, lock = {"sent": 0, "lost": 0}, threading.Lock()
    try:
        for port in ports:
            wait_until(lambda port=port: _listening(port), timeout=30, what="storescp")
        threads = [
            threading.Thread(target=_send, args=(port, sends, counts, lock)) for port in ports
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for peer in peers:
            peer.kill()
            peer.wait()
    print(json.dumps(counts))


if __name__ == "__main__":
    main(int(sys.argv[1]))
