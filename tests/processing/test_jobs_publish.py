"""Sending a processing job's message (workers/jobs.py): a failed publish is tried again."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_hub.config import Settings
from workers import jobs
from workers.board import JobSpec
from workers.celery_app import make_app


def test_a_failed_publish_is_tried_again_on_a_fresh_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's own retry publishes on the channel its revival closed; the hub gives the
    failed try up with its connection and sends again (workers/jobs.py _publish)."""
    app = make_app(Settings(data_dir=tmp_path / "data"))
    spec = JobSpec("1.2.3", "1.2.3.4", ("mip",), {}, ("1.2.3.4.5",))
    sent: list[tuple[object, object]] = []
    send_task = app.send_task

    def flaky(name: str, **options: object) -> object:
        sent.append((options["connection"], options["retry"]))
        if len(sent) == 1:
            raise AttributeError("'NoneType' object has no attribute 'client'")
        return send_task(name, **options)

    monkeypatch.setattr(app, "send_task", flaky)
    jobs._publish(app, spec)
    assert len(sent) == 2 and sent[0][0] is not sent[1][0]  # another connection
    assert {retry for _c, retry in sent} == {False}
    with app.connection_for_write() as connection, connection.SimpleQueue("gpu") as queue:
        message = queue.get(timeout=5)
        assert message.headers["id"] == spec.key
        message.ack()
    monkeypatch.setattr(app, "send_task", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
    with pytest.raises(OSError):
        jobs._publish(app, spec)
