"""C-ECHO and C-STORE with dcmtk against a real hub process."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import Hub, dcmtk


def test_echo_and_store_a_ct_volume(hub: Hub, shared_data: Path) -> None:
    subprocess.run([dcmtk("echoscu"), "127.0.0.1", str(hub.dicom_port)], check=True, timeout=30)
    files = sorted(
        (shared_data / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm").iterdir()
    )
    subprocess.run(
        [
            dcmtk("storescu"),
            "-aec",
            hub.ae_title,
            "127.0.0.1",
            str(hub.dicom_port),
            *map(str, files),
        ],
        check=True,
        timeout=120,
    )
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        (count,) = db.execute("select count(*) from instances").fetchone()
        (studies,) = db.execute("select num_instances from studies").fetchone()
    assert count == len(files) == studies == 28
