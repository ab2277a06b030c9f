"""API keys from ``ACESTEP_API_KEYS``, read once when the ingress starts.

Fail closed: a variable that is set must hold at least one well-formed key.
An empty or malformed value (``''``, ``' '``, ``','``, ``'k1,,k2'``, a key
with spaces) is a configuration error that stops the replica from starting,
never a silent "no authentication". Leaving the variable unset turns
authentication off, and the start-up log says so.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

API_KEYS_ENV = "ACESTEP_API_KEYS"
# RFC 6750's b64token: what a client can send after "Bearer " unchanged.
_KEY = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class AuthConfigError(ValueError):
    """``ACESTEP_API_KEYS`` is set but holds no usable key list."""


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys:
        value = (os.environ if environ is None else environ).get(API_KEYS_ENV)
        if value is None:
            return cls(())
        entries = [entry.strip() for entry in value.split(",")]
        if not any(entries):
            raise AuthConfigError(
                f"{API_KEYS_ENV} is set but lists no key ({value!r}); set it to 'key1,key2', "
                "or unset it to run without authentication"
            )
        if not all(entries):
            raise AuthConfigError(f"{API_KEYS_ENV} has an empty entry between its commas; remove it")
        malformed = [index for index, entry in enumerate(entries, start=1) if not _KEY.fullmatch(entry)]
        if malformed:
            # Positions, not the keys: the log must not carry secrets.
            raise AuthConfigError(
                f"{API_KEYS_ENV} entries {malformed} are not bearer tokens "
                "(letters, digits and -._~+/ only, optionally ending in =)"
            )
        return cls(tuple(entries))

    def summary(self) -> str:
        """One line for the start-up log: whether authentication is on, and with how many keys."""
        if self.enabled:
            return f"API authentication is on: {len(self.keys)} key(s) from {API_KEYS_ENV}"
        return (
            f"API authentication is OFF ({API_KEYS_ENV} is unset): anyone who reaches this port can "
            "generate, and read every output with its prompt and lyrics"
        )

    def allows(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header value passes (always, when authentication is off)."""
        if not self.enabled:
            return True
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and any(
            hmac.compare_digest(token.encode(), key.encode()) for key in self.keys
        )
