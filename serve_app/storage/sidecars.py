"""The write protocol of one output: its JSON sidecar first, then the audio."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from .keys import sidecar_key, validate_key
from .protocol import ObjectStore

logger = logging.getLogger(__name__)

SIDECAR_CONTENT_TYPE: Final = "application/json"


def write_output(
    store: ObjectStore, key: str, audio_bytes: bytes, content_type: str, sidecar: Mapping[str, Any]
) -> str:
    """Write one output: the audio at ``key`` and its JSON sidecar at ``sidecar_key(key)``.

    The sidecar holds ``sidecar`` (the resolved parameters etc., JSON-ready)
    plus an ``"object"`` entry describing the audio (key, content type, size,
    sha256). Returns the sidecar key. On failure raises the store's error
    after removing what it wrote.

    Ordering — sidecar first, audio last: the audio object is the output
    clients fetch and list, so it is written last and acts as the commit
    marker. The invariant "an audio object exists ⇒ its sidecar exists"
    (every result is reproducible from its sidecar) then holds even if the
    process dies between the two writes: the only possible leftover is a small
    sidecar without audio, which no client is ever pointed to. Audio first
    would leave an unexplained audio object in the same situation. On a failed
    audio write we delete the audio too (a PUT that timed out may still have
    landed) and delete the sidecar only once the audio is known gone, so the
    invariant also survives a failing cleanup.
    """
    validate_key(key)
    skey = validate_key(sidecar_key(key))
    if "object" in sidecar:
        raise ValueError("sidecar must not contain an 'object' entry; write_output fills it in")
    document = {
        **sidecar,
        "object": {
            "key": key,
            "content_type": content_type,
            "size_bytes": len(audio_bytes),
            "sha256": hashlib.sha256(audio_bytes).hexdigest(),
        },
    }
    try:
        sidecar_bytes = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sidecar is not JSON-serialisable: {exc}") from exc

    try:
        store.put(skey, sidecar_bytes, SIDECAR_CONTENT_TYPE)
    except Exception:
        _delete_quietly(store, skey)  # a failed PUT may still have landed
        raise
    try:
        store.put(key, audio_bytes, content_type)
    except Exception:
        if _delete_quietly(store, key):
            _delete_quietly(store, skey)
        raise
    return skey


def _delete_quietly(store: ObjectStore, key: str) -> bool:
    try:
        store.delete(key)
        return True
    except Exception as exc:  # best effort: the original error is what matters
        logger.warning("cleanup of %r after a failed write failed: %s", key, exc)
        return False
