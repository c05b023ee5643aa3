"""One quota per login: a model credential named by its keyed fingerprint, never by itself.

A rate limit or an exhausted quota belongs to the credential (the API key, the
subscription's token), so every agent using it must park until the reset. The
queue has to tell which agents share a credential without ever holding one:
:func:`fingerprint` is an HMAC-SHA256 of the credential under the queue's own
random key (:meth:`~.store.Store.login_key`, made once and kept in the queue's
``secrets`` table, which no agent can read through the gateway). The same
credential gives the same fingerprint on every host of a shared queue; without
the key, a fingerprint cannot be used to test a guessed credential.

Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac

#: Hex digits of a fingerprint: 48 bits, enough to tell a fleet's logins apart.
LENGTH = 12


def fingerprint(key: bytes, credential: bytes | str) -> str:
    """The keyed fingerprint of ``credential`` (its bytes, stripped of surrounding whitespace)."""
    data = credential.encode() if isinstance(credential, str) else bytes(credential)
    return hmac.new(key, data.strip(), hashlib.sha256).hexdigest()[:LENGTH]
