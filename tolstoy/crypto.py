"""Encryption at rest (organization secrets, credentials) and API-key hashing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tolstoy.errors import TolstoyError


def _derive(secret_key: str, purpose: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tolstoy", info=purpose)
    return hkdf.derive(secret_key.encode())


class Cipher:
    """Fernet (AES-128-CBC + HMAC) with a key derived from ``TOLSTOY_SECRET_KEY``."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"encryption-v1")))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise TolstoyError(
                "a stored secret cannot be decrypted: is TOLSTOY_SECRET_KEY the same?"
            ) from exc


def signing_key(secret_key: str) -> bytes:
    """The key subscribe tokens and login tokens are signed with."""
    return _derive(secret_key, b"token-signing-v1")


API_KEY_PREFIX = "tsk_"


def new_api_key() -> str:
    return API_KEY_PREFIX + _secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of a high-entropy random key: fast to check, useless to an attacker who reads it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    return key[:12]


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
