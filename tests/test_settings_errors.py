"""A setting that is not valid, or a data folder that cannot be used, is said in one
line naming it, with exit status 2 (no traceback), by ``pacs-hub serve`` and the other
commands alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def _pacs_hub(*args: str, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "pacs_hub.cli", *args],
        env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_a_bad_environment_value_is_named(tmp_path: Path) -> None:
    for command in (["serve"], ["nodes", "list"]):
        code, said = _pacs_hub(*command, PACS_HUB_DATA_DIR=str(tmp_path), PACS_HUB_DICOM_PORT="abc")
        assert code == 2, said
        assert "error: PACS_HUB_DICOM_PORT='abc': Input should be a valid integer" in said
        assert "Traceback" not in said


def test_a_bad_option_is_named(tmp_path: Path) -> None:
    code, said = _pacs_hub("serve", "--data-dir", str(tmp_path), "--http-port", "70000")
    assert code == 2, said
    assert "error: --http-port=70000: Input should be less than or equal to 65535" in said
    assert not any(tmp_path.iterdir())  # nothing made


def test_a_data_folder_that_cannot_be_made_is_said(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, said = _pacs_hub(
        "serve",
        PACS_HUB_DATA_DIR=str(blocker / "data"),
        PACS_HUB_HOST="127.0.0.1",
        PACS_HUB_DICOM_PORT=str(free_port()),
        PACS_HUB_HTTP_PORT=str(free_port()),
    )
    assert code == 2, said
    assert f"error: cannot use data folder {blocker / 'data'}: Not a directory" in said
