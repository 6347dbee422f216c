"""The Noise Protocol Framework (revision 34) handshake machinery, over Curve25519.

Patterns are token tables (:data:`_PATTERNS`) run by one generic engine, so adding a pattern is
one table entry. Every primitive comes from ``cryptography``; this module only composes them as
the Noise specification describes (sections 5 and 9).
"""

from __future__ import annotations

import functools
import hmac as _hmac
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.errors import CryptoError, HandshakeError

__all__ = [
    "CIPHERS",
    "HASHES",
    "PATTERNS",
    "CipherState",
    "HandshakeState",
    "generate_private_key",
    "protocol_name",
    "public_key",
]

CIPHERS = ("ChaChaPoly", "AESGCM")
HASHES = ("BLAKE2s", "BLAKE2b", "SHA256", "SHA512")

DHLEN = 32
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535
"""Noise messages never exceed 65535 bytes (spec section 3)."""
MAX_NONCE = (1 << 64) - 1
"""Reserved by the spec; a CipherState refuses to use it (section 5.1)."""

_ZERO_DH = bytes(DHLEN)

Token = Literal["e", "s", "ee", "es", "se", "ss", "psk"]


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A handshake pattern: what each side knows beforehand, then the messages in order."""

    initiator_pre: tuple[Literal["s"], ...]
    responder_pre: tuple[Literal["s"], ...]
    messages: tuple[tuple[Token, ...], ...]

    @property
    def has_psk(self) -> bool:
        return any("psk" in message for message in self.messages)


_PATTERNS: dict[str, _Pattern] = {
    # <- s ... -> e, es, s, ss  <- e, ee, se
    "IK": _Pattern((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    # As IK, with the psk mixed in at the end of the second message (WireGuard's pattern).
    "IKpsk2": _Pattern((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se", "psk"))),
    # No statics: fresh ephemerals on both sides, authenticated only by the pre-shared key.
    "NNpsk0": _Pattern((), (), (("psk", "e"), ("e", "ee"))),
}

PATTERNS = tuple(_PATTERNS)


def protocol_name(pattern: str, cipher: str, hash_name: str) -> str:
    """The full Noise protocol name, e.g. ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s``."""
    _check_choice("pattern", pattern, PATTERNS)
    _check_choice("cipher", cipher, CIPHERS)
    _check_choice("hash", hash_name, HASHES)
    return f"Noise_{pattern}_25519_{cipher}_{hash_name}"


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise HandshakeError(f"unknown Noise {what} {value!r}; supported: {', '.join(allowed)}")


def _check_key(what: str, key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEYLEN:
        got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise HandshakeError(f"{what} must be exactly {KEYLEN} bytes, got {got}")
    return bytes(key)


# --- DH ----------------------------------------------------------------------------------------


def generate_private_key() -> bytes:
    """A fresh X25519 private key, raw 32 bytes."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw 32-byte private key."""
    return _static_keypair(_check_key("private key", private)).public


@functools.lru_cache(maxsize=256)
def _static_keypair(private: bytes) -> _Keypair:
    # Long-term keys take part in every handshake: loading one and deriving its public key is
    # a scalar multiplication, so it is done once per key, not once per handshake (a gateway
    # answers many). Bounded: at most 256 keys are kept loaded.
    return _Keypair(private)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    # A low-order remote point yields an all-zero secret that anyone can compute; refuse it.
    # cryptography already raises ValueError for it, the explicit check is belt and braces.
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise CryptoError("Diffie-Hellman with a low-order public key (all-zero result)") from None
    if _hmac.compare_digest(shared, _ZERO_DH):
        raise CryptoError("Diffie-Hellman with a low-order public key (all-zero result)")
    return shared


# --- hash and HKDF -----------------------------------------------------------------------------


def _hash_algorithm(hash_name: str) -> hashes.HashAlgorithm:
    if hash_name == "BLAKE2s":
        return hashes.BLAKE2s(32)
    if hash_name == "BLAKE2b":
        return hashes.BLAKE2b(64)
    if hash_name == "SHA256":
        return hashes.SHA256()
    if hash_name == "SHA512":
        return hashes.SHA512()
    raise HandshakeError(f"unknown Noise hash {hash_name!r}; supported: {', '.join(HASHES)}")


class _Hash:
    """HASH, HMAC-HASH and the Noise HKDF for one hash function."""

    __slots__ = ("algorithm", "hashlen")

    def __init__(self, hash_name: str):
        self.algorithm = _hash_algorithm(hash_name)
        self.hashlen = self.algorithm.digest_size

    def digest(self, data: bytes) -> bytes:
        h = hashes.Hash(self.algorithm)
        h.update(data)
        return h.finalize()

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        h = crypto_hmac.HMAC(key, self.algorithm)
        h.update(data)
        return h.finalize()

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
        """HKDF as Noise defines it (section 4.3): 2 or 3 outputs of HASHLEN bytes each."""
        temp_key = self._hmac(chaining_key, ikm)
        out: list[bytes] = []
        previous = b""
        for i in range(1, outputs + 1):
            previous = self._hmac(temp_key, previous + bytes([i]))
            out.append(previous)
        return out


# --- CipherState -------------------------------------------------------------------------------


class CipherState:
    """A key and a nonce counter; with no key, encryption is the identity (spec section 5.1)."""

    __slots__ = ("_aead", "_cipher", "_key", "nonce")

    def __init__(self, key: bytes | None = None, *, cipher: str = "ChaChaPoly", nonce: int = 0):
        _check_choice("cipher", cipher, CIPHERS)
        self._cipher = cipher
        self._key: bytes | None = None
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self.key = key
        self.nonce = nonce

    @property
    def cipher(self) -> str:
        return self._cipher

    @property
    def key(self) -> bytes | None:
        return self._key

    @key.setter
    def key(self, key: bytes | None) -> None:
        # The AEAD object is built once per key, not once per message.
        if key is None:
            self._key, self._aead = None, None
            return
        self._key = _check_key("cipher key", key)
        self._aead = (
            ChaCha20Poly1305(self._key) if self._cipher == "ChaChaPoly" else AESGCM(self._key)
        )

    def has_key(self) -> bool:
        return self._key is not None

    def _nonce_bytes(self) -> bytes:
        if self.nonce >= MAX_NONCE:
            raise CryptoError("Noise nonce exhausted; the session must be rekeyed")
        # The spec fixes the byte order per cipher: ChaChaPoly little-endian, AESGCM big-endian.
        order: Literal["little", "big"] = "little" if self._cipher == "ChaChaPoly" else "big"
        return bytes(4) + self.nonce.to_bytes(8, order)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Seal ``plaintext`` with the next nonce; the identity when there is no key."""
        if self._aead is None:
            return plaintext
        ciphertext = self._aead.encrypt(self._nonce_bytes(), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Open ``ciphertext``; raises :class:`CryptoError` (and keeps the nonce) if it fails."""
        if self._aead is None:
            return ciphertext
        if len(ciphertext) < TAGLEN:
            raise CryptoError(f"ciphertext of {len(ciphertext)} bytes is shorter than its tag")
        try:
            plaintext = self._aead.decrypt(self._nonce_bytes(), ciphertext, ad)
        except InvalidTag:
            raise CryptoError("authentication failed (wrong key or tampered data)") from None
        self.nonce += 1
        return plaintext


# --- SymmetricState ----------------------------------------------------------------------------


class _SymmetricState:
    """ck, h and the handshake CipherState (spec section 5.2)."""

    __slots__ = ("ck", "cs", "h", "hash")

    def __init__(self, name: bytes, cipher: str, hash_name: str):
        self.hash = _Hash(hash_name)
        if len(name) <= self.hash.hashlen:
            self.h = name.ljust(self.hash.hashlen, b"\x00")
        else:
            self.h = self.hash.digest(name)
        self.ck = self.h
        self.cs = CipherState(cipher=cipher)

    def _truncate(self, key: bytes) -> bytes:
        # 64-byte hashes give 64-byte HKDF outputs; cipher keys are the first 32 bytes.
        return key[:KEYLEN]

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self.hash.hkdf(self.ck, ikm, 2)
        self.cs = CipherState(self._truncate(temp_k), cipher=self.cs.cipher)

    def mix_hash(self, data: bytes) -> None:
        self.h = self.hash.digest(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = self.hash.hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs = CipherState(self._truncate(temp_k), cipher=self.cs.cipher)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split_keys(self) -> tuple[bytes, bytes]:
        k1, k2 = self.hash.hkdf(self.ck, b"", 2)
        return self._truncate(k1), self._truncate(k2)

    def snapshot(self) -> tuple[bytes, bytes, CipherState]:
        return self.ck, self.h, self.cs

    def restore(self, saved: tuple[bytes, bytes, CipherState], nonce: int) -> None:
        self.ck, self.h, self.cs = saved
        self.cs.nonce = nonce


# --- HandshakeState ----------------------------------------------------------------------------


class _Keypair:
    __slots__ = ("private", "public")

    def __init__(self, private: bytes | X25519PrivateKey):
        self.private = (X25519PrivateKey.from_private_bytes(private)
                        if isinstance(private, bytes) else private)
        self.public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class HandshakeState:
    """One side of one Noise handshake (spec section 5.3).

    A failed :meth:`read_message` leaves the state exactly as it was, so a forged or corrupted
    message can be dropped and the genuine one still processed.
    """

    def __init__(
        self,
        pattern: str,
        initiator: bool,
        *,
        cipher: str = "ChaChaPoly",
        hash_name: str = "BLAKE2s",
        prologue: bytes = b"",
        s: bytes | None = None,
        rs: bytes | None = None,
        psk: bytes | None = None,
        e: bytes | None = None,
        defer_psk: bool = False,
    ):
        name = protocol_name(pattern, cipher, hash_name)
        self._defer_psk = defer_psk
        self._pattern = _PATTERNS[pattern]
        self._initiator = initiator
        self._check_inputs(pattern, s=s, rs=rs, psk=psk)

        self._s = _static_keypair(_check_key("static private key (s)", s)) if s is not None \
            else None
        self._rs = _check_key("remote static public key (rs)", rs) if rs is not None else None
        self._psk = _check_key("pre-shared key (psk)", psk) if psk is not None else None
        self._e = _Keypair(_check_key("ephemeral private key (e)", e)) if e is not None else None
        self._re: bytes | None = None
        self._index = 0

        self._ss = _SymmetricState(name.encode("ascii"), cipher, hash_name)
        self._ss.mix_hash(prologue)
        # Pre-messages: the initiator's first, then the responder's (spec section 7.1).
        for token in self._pattern.initiator_pre:
            self._mix_pre_message(token, ours=initiator)
        for token in self._pattern.responder_pre:
            self._mix_pre_message(token, ours=not initiator)

    def _check_inputs(
        self, pattern: str, *, s: bytes | None, rs: bytes | None, psk: bytes | None
    ) -> None:
        p = self._pattern
        ours = p.initiator_pre if self._initiator else p.responder_pre
        theirs = p.responder_pre if self._initiator else p.initiator_pre
        sent = [m for i, m in enumerate(p.messages) if (i % 2 == 0) == self._initiator]
        needs_s = "s" in ours or any("s" in m for m in sent)
        needs_rs = "s" in theirs
        role = "initiator" if self._initiator else "responder"
        # An unused key is refused rather than ignored: silently dropping it would let a caller
        # believe a static key or psk authenticates a session that it does not.
        for what, needed, value in (
            ("our static private key (s)", needs_s, s),
            ("the remote static public key (rs)", needs_rs, rs),
            ("a pre-shared key (psk)", p.has_psk and not self._defer_psk, psk),
        ):
            if needed and value is None:
                raise HandshakeError(f"Noise {pattern} {role} needs {what}")
            if not needed and value is not None:
                raise HandshakeError(f"Noise {pattern} {role} does not use {what}")

    def set_psk(self, psk: bytes) -> None:
        """Supply a deferred psk. An IKpsk2 responder learns who the initiator is (and so which
        psk applies) only from message 1, and the psk token comes later, in message 2."""
        if not self._pattern.has_psk:
            raise HandshakeError("this pattern does not use a pre-shared key")
        self._psk = _check_key("pre-shared key (psk)", psk)

    def _mix_pre_message(self, token: Literal["s"], *, ours: bool) -> None:
        key = self._s.public if ours and self._s is not None else self._rs
        assert key is not None  # guaranteed by _check_inputs
        self._ss.mix_hash(key)

    # --- state -------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._index >= len(self._pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """h at the end of the handshake, for channel binding."""
        if not self.complete:
            raise HandshakeError("the handshake hash is only final once the handshake completes")
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once it is known."""
        return self._rs

    def _our_turn(self) -> bool:
        return (self._index % 2 == 0) == self._initiator

    def _check_turn(self, writing: bool) -> None:
        if self.complete:
            raise HandshakeError("the handshake is already complete")
        if self._our_turn() != writing:
            if writing:
                raise HandshakeError("out of turn: waiting for the peer's handshake message")
            raise HandshakeError("out of turn: it is our turn to write a handshake message")

    def split_keys(self) -> tuple[bytes, bytes]:
        """(initiator->responder, responder->initiator) raw 32-byte transport keys."""
        if not self.complete:
            raise HandshakeError("cannot split before the handshake completes")
        return self._ss.split_keys()

    def split(self) -> tuple[CipherState, CipherState]:
        """Transport CipherStates (initiator->responder, responder->initiator), nonces at 0.

        Each call returns fresh states over the same keys: use one split per session.
        """
        k1, k2 = self.split_keys()
        cipher = self._ss.cs.cipher
        return CipherState(k1, cipher=cipher), CipherState(k2, cipher=cipher)

    # --- messages ----------------------------------------------------------------------------

    def _dh_token(self, token: Token) -> bytes:
        # Token names are (initiator key, responder key); pick our half and the peer's half.
        local, remote = (token[0], token[1]) if self._initiator else (token[1], token[0])
        ours = self._e if local == "e" else self._s
        theirs = self._re if remote == "e" else self._rs
        if ours is None or theirs is None:
            raise HandshakeError(f"Noise token {token!r} used before its keys are known")
        return _dh(ours.private, theirs)

    def _mix_ephemeral(self, public: bytes) -> None:
        self._ss.mix_hash(public)
        # In a psk handshake "e" also feeds the key, so a psk never encrypts under a key that
        # lacks fresh randomness (spec section 9.2).
        if self._pattern.has_psk:
            self._ss.mix_key(public)

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message carrying ``payload``."""
        self._check_turn(writing=True)
        saved, nonce, saved_e = self._ss.snapshot(), self._ss.cs.nonce, self._e
        try:
            message = self._write_tokens(payload)
        except BaseException:
            self._ss.restore(saved, nonce)
            self._e = saved_e
            raise
        self._advance()
        return message

    def _write_tokens(self, payload: bytes) -> bytes:
        out = bytearray()
        for token in self._pattern.messages[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = _Keypair(X25519PrivateKey.generate())
                out += self._e.public
                self._mix_ephemeral(self._e.public)
            elif token == "s":
                assert self._s is not None  # guaranteed by _check_inputs
                out += self._ss.encrypt_and_hash(self._s.public)
            elif token == "psk":
                if self._psk is None:
                    raise HandshakeError("the pre-shared key was deferred and never supplied")
                self._ss.mix_key_and_hash(self._psk)
            else:
                self._ss.mix_key(self._dh_token(token))
        out += self._ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN:
            raise HandshakeError(
                f"handshake message would be {len(out)} bytes; Noise allows {MAX_MESSAGE_LEN}"
            )
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message and return its payload."""
        self._check_turn(writing=False)
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError(
                f"handshake message of {len(message)} bytes; Noise allows {MAX_MESSAGE_LEN}"
            )
        saved, nonce = self._ss.snapshot(), self._ss.cs.nonce
        saved_re, saved_rs = self._re, self._rs
        try:
            payload = self._read_tokens(bytes(message))
        except BaseException:
            self._ss.restore(saved, nonce)
            self._re, self._rs = saved_re, saved_rs
            raise
        self._advance()
        return payload

    def _read_tokens(self, message: bytes) -> bytes:
        number = self._index + 1
        view = memoryview(message)
        pos = 0

        def take(length: int, what: str) -> bytes:
            nonlocal pos
            if len(view) - pos < length:
                raise HandshakeError(
                    f"handshake message {number} truncated: {what} needs {length} bytes, "
                    f"{len(view) - pos} left"
                )
            chunk = bytes(view[pos : pos + length])
            pos += length
            return chunk

        for token in self._pattern.messages[self._index]:
            if token == "e":
                self._re = take(DHLEN, "ephemeral key")
                self._mix_ephemeral(self._re)
            elif token == "s":
                length = DHLEN + (TAGLEN if self._ss.cs.has_key() else 0)
                sealed = take(length, "static key")
                self._rs = self._decrypt(sealed, number, "static key")
            elif token == "psk":
                if self._psk is None:
                    raise HandshakeError("the pre-shared key was deferred and never supplied")
                self._ss.mix_key_and_hash(self._psk)
            else:
                self._ss.mix_key(self._dh_token(token))
        if self._ss.cs.has_key() and len(view) - pos < TAGLEN:
            raise HandshakeError(
                f"handshake message {number} truncated: payload needs at least {TAGLEN} bytes"
            )
        return self._decrypt(take(len(view) - pos, "payload"), number, "payload")

    def _decrypt(self, ciphertext: bytes, number: int, what: str) -> bytes:
        try:
            return self._ss.decrypt_and_hash(ciphertext)
        except CryptoError:
            raise CryptoError(
                f"handshake message {number}: {what} failed authentication "
                "(wrong static key, wrong psk, or a tampered message)"
            ) from None

    def _advance(self) -> None:
        self._index += 1
        if self.complete:
            # The ephemeral private key is no longer needed; drop our reference so it is not
            # kept alive for the session's lifetime (forward secrecy).
            self._e = None
