"""The local-directory object store: the single-machine default."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Final
from urllib.parse import quote

from .errors import ObjectNotFoundError, StorageConfigError, StorageError, StorageUnavailableError
from .keys import validate_key

# Errors of the disk itself, as opposed to a bad key or a file-vs-folder clash.
_UNAVAILABLE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOENT})
# The service's user may not write there: only an operator can change that.
_CONFIG_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM})
ROOT_SETTING: Final = "storage.local_root (ACESTEP_OUTPUT_DIR)"


class LocalStore:
    """:class:`ObjectStore` on a local directory (single-machine default).

    Writes are atomic: data goes to a temporary file in the target's own
    directory (named ``.tmp-<random>``; keys cannot start a segment
    with ``.``, so temporaries are never addressable or listed), is fsynced,
    then ``os.replace``\\ d over the target. Readers see the old object or the
    new one, never a partial one, and a crash leaves at most a stray
    temporary. ``content_type`` is not stored; serve files with a type derived
    from the extension (see :meth:`path`).
    """

    def __init__(self, root: str | os.PathLike[str], url_prefix: str = "/outputs"):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")
        self.config_error: StorageConfigError | None = None

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        """Filesystem path of ``key`` (validated; always inside ``root``)."""
        validate_key(key)
        p = self.root.joinpath(*key.split("/"))
        # validate_key already rules out escapes; this also refuses a symlink
        # planted inside the root that points outside it.
        if not p.resolve().is_relative_to(self.root):
            raise ValueError("object key resolves outside the store root")
        return p

    def put(self, key: str, data: bytes, content_type: str) -> None:
        target = self.path(key)
        tmp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(target.parent)
        except OSError as exc:
            raise self._error("put", key, exc) from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.config_error = None

    def get(self, key: str) -> bytes:
        p = self.path(key)
        try:
            return p.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise self._error("get", key, exc) from exc

    def file(self, key: str) -> Path:
        """The file holding ``key``, for callers that stream it in ranges instead of reading it whole.

        Writes replace files atomically, so a reader that opens it sees one whole version.
        """
        p = self.path(key)
        if not p.is_file():
            raise ObjectNotFoundError(key)
        return p

    def delete(self, key: str) -> None:
        p = self.path(key)
        try:
            if not p.is_dir():
                p.unlink(missing_ok=True)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise self._error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        # Walk only below the deepest folder named by the prefix.
        folder = prefix.rpartition("/")[0]
        start = self.root
        if folder:
            try:
                start = self.path(folder)
            except ValueError:
                return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # temporaries (and anything else unaddressable)
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def url(self, key: str) -> str:
        """``{url_prefix}/{key}`` (percent-encoded): the ingress serves the directory."""
        validate_key(key)
        return f"{self.url_prefix}/{quote(key, safe='/')}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailableError(f"output directory {self.root} does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            self.config_error = StorageConfigError(
                f"output directory {self.root} is not writable by this process",
                reason="this process may not read or write the output directory",
                setting=ROOT_SETTING,
            )
            raise self.config_error
        self.config_error = None

    def _error(self, op: str, key: str, exc: OSError) -> StorageError:
        message = f"{op} {key!r} in {self.root} failed: {exc.strerror or exc}"
        if exc.errno in _CONFIG_ERRNOS:
            self.config_error = StorageConfigError(
                message, reason="this process may not read or write the output directory", setting=ROOT_SETTING
            )
            return self.config_error
        cls = StorageUnavailableError if exc.errno in _UNAVAILABLE_ERRNOS else StorageError
        return cls(message)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
