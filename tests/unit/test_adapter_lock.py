"""The lock that orders llama.cpp's adapter init/free against contexts using the model
(:class:`edge_lora.engine.native.AdapterSetLock`): readers share, a writer excludes them, and a
waiting writer stops new readers (no starvation by a stream of decodes)."""

from __future__ import annotations

import threading
import time

from edge_lora.engine.native import AdapterSetLock


def test_readers_share_and_a_writer_waits_for_them():
    lock = AdapterSetLock()
    events: list[str] = []
    inside = threading.Barrier(3)

    def reader(name: str) -> None:
        with lock.shared():
            inside.wait(timeout=5)  # both readers hold it at once
            time.sleep(0.05)
            events.append(f"{name} out")

    def writer() -> None:
        inside.wait(timeout=5)
        with lock.exclusive():
            events.append("writer in")

    threads = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert sorted(events[:2]) == ["r1 out", "r2 out"] and events[2] == "writer in"


def test_a_waiting_writer_stops_new_readers():
    lock = AdapterSetLock()
    order: list[str] = []
    first_in, writer_waiting = threading.Event(), threading.Event()

    def first_reader() -> None:
        with lock.shared():
            first_in.set()
            writer_waiting.wait(timeout=5)
            time.sleep(0.05)
            order.append("first reader out")

    def writer() -> None:
        first_in.wait(timeout=5)
        writer_waiting.set()
        with lock.exclusive():
            order.append("writer")

    def late_reader() -> None:
        writer_waiting.wait(timeout=5)
        time.sleep(0.01)  # the writer is waiting by now
        with lock.shared():
            order.append("late reader")

    threads = [threading.Thread(target=f) for f in (first_reader, writer, late_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert order == ["first reader out", "writer", "late reader"]
