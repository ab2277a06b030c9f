"""A replica's health check reports its store without ever failing because of it."""

from __future__ import annotations

import logging

from serve_app.storage import LocalStore
from serve_app.storage.watch import StorageWatch


def test_an_outage_is_reported_once_per_change_and_never_raised(tmp_path, caplog):
    store = LocalStore(tmp_path / "outputs")
    watch = StorageWatch(store, "generator")
    caplog.set_level(logging.WARNING, logger="serve_app.storage.watch")

    assert watch.observe() == "ok" and caplog.messages == []
    (tmp_path / "outputs").rmdir()
    assert [watch.observe(), watch.observe()] == ["unavailable", "unavailable"]
    (tmp_path / "outputs").mkdir()
    assert watch.observe() == "ok"
    assert caplog.messages == [
        "generator: object storage is unavailable (the replica stays up and reports it)",
        "generator: object storage is reachable again",
    ]
