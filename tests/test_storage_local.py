"""The local-directory store: round trip, key safety, atomic writes, faults."""

from __future__ import annotations

import threading

import pytest

from serve_app.storage import LocalStore, ObjectNotFoundError, ObjectStore, StorageError, StorageUnavailableError


def test_local_store_round_trip(tmp_path):
    store = LocalStore(tmp_path / "out", url_prefix="/outputs/")
    assert isinstance(store, ObjectStore)
    store.put("a/b/one.wav", b"one", "audio/wav")
    store.put("a/two.wav", b"two", "audio/wav")
    store.put("a/b/one.wav", b"uno", "audio/wav")  # overwrite
    assert store.get("a/b/one.wav") == b"uno"
    assert store.list("") == ["a/b/one.wav", "a/two.wav"]
    assert store.list("a/b") == ["a/b/one.wav"]
    assert store.list("a/t") == ["a/two.wav"]
    assert store.list("zzz/") == []
    assert store.url("a/b/one.wav") == "/outputs/a/b/one.wav"
    assert store.url("x/Summer Song-1.mp3") == "/outputs/x/Summer%20Song-1.mp3"
    assert store.path("a/two.wav") == (tmp_path / "out" / "a" / "two.wav").resolve()
    store.delete("a/two.wav")
    store.delete("a/two.wav")  # missing: no error, like S3
    assert store.list("") == ["a/b/one.wav"]
    with pytest.raises(ObjectNotFoundError):
        store.get("a/two.wav")
    with pytest.raises(ObjectNotFoundError):
        store.get("a/b")  # a folder is not an object
    store.check()
    assert store.config_error is None


@pytest.mark.parametrize(
    "key",
    ["../escape.wav", "a/../../escape.wav", "/tmp/escape.wav", "a\\..\\escape.wav", "a//b", "a\x00b", ".tmp-x"],
)
def test_local_store_rejects_unsafe_keys(tmp_path, key):
    root = tmp_path / "root"
    store = LocalStore(root)
    before = sorted(p.name for p in tmp_path.iterdir())
    for op in (
        lambda: store.put(key, b"x", "audio/wav"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.url(key),
    ):
        with pytest.raises(ValueError):
            op()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(root.rglob("*")) == []


def test_local_store_refuses_symlink_out_of_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalStore(tmp_path / "root")
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the store root"):
        store.put("link/x.wav", b"x", "audio/wav")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_local_store_failed_write_leaves_old_object_and_no_temp(tmp_path, monkeypatch, failing):
    store = LocalStore(tmp_path)
    store.put("d/k.wav", b"old", "audio/wav")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(failing, boom)
    with pytest.raises(StorageUnavailableError, match="No space left"):
        store.put("d/k.wav", b"new" * 1000, "audio/wav")
    with pytest.raises(StorageUnavailableError):
        store.put("d/fresh.wav", b"new", "audio/wav")
    monkeypatch.undo()
    assert store.get("d/k.wav") == b"old"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k.wav"]  # no temporaries


def test_local_store_permission_denied_is_a_configuration_error(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(StorageError) as info:
        store.put("d/k.wav", b"x", "audio/wav")
    assert info.value is store.config_error and "storage.local_root" in info.value.public_message
    monkeypatch.undo()
    store.put("d/k.wav", b"x", "audio/wav")  # fixed: the next write clears it
    assert store.config_error is None


def test_local_store_readers_never_see_partial_writes(tmp_path):
    store = LocalStore(tmp_path)
    a, b = b"A" * 2_000_000, b"B" * 3_000_000
    store.put("k.wav", a, "audio/wav")
    stop = threading.Event()

    def writer():
        for i in range(40):
            store.put("k.wav", b if i % 2 == 0 else a, "audio/wav")
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        data = store.get("k.wav")
        assert data in (a, b), f"partial read of {len(data)} bytes"
    t.join()
    assert store.list("") == ["k.wav"]


def test_local_store_ignores_stray_temporaries_and_folder_clash(tmp_path):
    store = LocalStore(tmp_path)
    store.put("d/k.wav", b"x", "audio/wav")
    (tmp_path / "d" / ".tmp-crashed").write_bytes(b"half")
    assert store.list("") == ["d/k.wav"]
    with pytest.raises(StorageError):
        store.put("d", b"x", "audio/wav")  # 'd' is a folder
    with pytest.raises(StorageError):
        store.put("d/k.wav/x", b"x", "audio/wav")  # 'd/k.wav' is a file


def test_local_store_check_fails_when_root_is_gone(tmp_path):
    store = LocalStore(tmp_path / "r")
    (tmp_path / "r").rmdir()
    with pytest.raises(StorageUnavailableError):
        store.check()
