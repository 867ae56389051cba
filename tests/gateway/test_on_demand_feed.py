"""The retrieve-on-demand Feed batches what a pull makes durable (no network, no index).

A pull reports every instance it stores; the Feed must not select from the index and
check access once per report, or streaming a large study costs the hub more than the
pull itself (gateway/on_demand.py, ``BATCH_EVERY``). The pull here is a thread that
"stores" an instance every millisecond and reports it, the selection a list.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pacs_hub.gateway import on_demand
from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.retrieval import RetrieveItem

INSTANCES = 300


class FakePull:
    """What the Feed reads of a :class:`~pacs_hub.gateway.on_demand.Pull`."""

    def __init__(self) -> None:
        self.located = threading.Event()
        self.finished = threading.Event()
        self.wake = threading.Event()
        self.expected: dict[str, int | None] = {"1.2.3": INSTANCES}
        self.sop_classes: list[str] = []
        self.errors: list[str] = []
        self.pulled = 0
        self.pending = lambda received, expected: None
        self.pending.close = lambda: None  # type: ignore[attr-defined]
        self.stored: list[RetrieveItem] = []

    def run(self) -> None:
        self.located.set()
        for pk in range(1, INSTANCES + 1):
            self.stored.append(_item(pk))
            self.wake.set()  # the progress report of each instance
            time.sleep(0.001)
        self.pulled = 1
        self.finished.set()
        self.wake.set()


def _item(pk: int) -> RetrieveItem:
    uid = f"1.2.3.4.{pk}"
    blob: Any = BlobRef.__new__(BlobRef)
    ct, explicit = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    return RetrieveItem(ct, uid, explicit, blob, uid, "", pk=pk)


def test_batches_hand_out_every_instance_once_with_few_index_polls() -> None:
    pull = FakePull()
    polls: list[int] = []

    def choose(after: int) -> list[RetrieveItem]:
        polls.append(after)
        return [item for item in list(pull.stored) if item.pk > after]

    feed = on_demand.Feed(pull, "STUDY", [], choose, 0)  # type: ignore[arg-type]
    thread = threading.Thread(target=pull.run)
    started = time.monotonic()
    thread.start()
    sent = [item.sop_instance_uid for batch in feed.batches() for item in batch]
    elapsed = time.monotonic() - started
    thread.join()

    assert sent == [f"1.2.3.4.{pk}" for pk in range(1, INSTANCES + 1)]
    # without the pause between polls there is about one per reported instance; with
    # it, one per BATCH_EVERY at most, plus the last one and a little slack
    assert len(polls) < INSTANCES / 4, len(polls)
    assert len(polls) <= elapsed / on_demand.BATCH_EVERY + 3, (len(polls), elapsed)
    assert polls[-1] == 0  # the last poll is a full selection, once the pull ended
