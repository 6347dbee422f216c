"""The Noise Protocol Framework (revision 34) handshake machinery, over Curve25519.

Patterns are token tables (:data:`_PATTERNS`) run by one generic engine, so adding a pattern is
one table entry. X25519 and the AEADs come from ``cryptography``, the hash functions from
``hashlib`` (the same algorithms; a one-shot ``hashlib`` digest costs a sixth of
``cryptography``'s ``Hash`` object, and a handshake takes 22 of them, HMACs included); this
module only composes them as the Noise specification describes (sections 5 and 9).

What a gateway answers all day is costed in bench/README.md ("Gateway"): the X25519 operations
are most of a handshake, so none is done twice (static key pairs and static-static secrets are
kept, bounded) and the Python around them creates few objects.
"""

from __future__ import annotations

import functools
import hashlib
import hmac as _hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from core.errors import CryptoError, HandshakeError

__all__ = [
    "CIPHERS",
    "HASHES",
    "PATTERNS",
    "CipherState",
    "HandshakeState",
    "generate_private_key",
    "hmac_blake2s",
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


STATIC_DH_CACHE = 4096
"""Static-static secrets (the IK ``ss`` token) kept, least recently used dropped first: one
per pair of static keys, the same in every handshake between them, so a gateway computes each
peer's once (as WireGuard precomputes it) instead of once per handshake. 4096 is the most
peers a gateway has (core/gateway.py MAX_PEERS); an entry is about 300 bytes."""


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


@functools.lru_cache(maxsize=STATIC_DH_CACHE)
def _static_shared(private: bytes, remote_public: bytes) -> bytes:
    # A failed DH raises, and lru_cache keeps no exceptions: a low-order key is refused
    # every time.
    return _dh(_static_keypair(private).private, remote_public)


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


class _HashObject(Protocol):
    @property
    def digest_size(self) -> int: ...

    def digest(self) -> bytes: ...


_HASH_FUNCTIONS: dict[str, tuple[Callable[..., _HashObject], int]] = {
    # name: (constructor, BLOCKLEN: the HMAC block size, Noise spec section 4.3)
    "BLAKE2s": (hashlib.blake2s, 64),
    "BLAKE2b": (hashlib.blake2b, 128),
    "SHA256": (hashlib.sha256, 64),
    "SHA512": (hashlib.sha512, 128),
}
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@functools.lru_cache(maxsize=len(HASHES))
def _hash_for(hash_name: str) -> _Hash:
    return _Hash(hash_name)


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (32 bytes), as the HKDF computes it: for the handshake MACs, where the
    standard library's hmac (a Python object per call) costs twice as much."""
    return _hash_for("BLAKE2s").hmac(key, data)


class _Hash:
    """HASH, HMAC-HASH and the Noise HKDF for one hash function."""

    __slots__ = ("_new", "blocklen", "hashlen")

    def __init__(self, hash_name: str):
        if hash_name not in _HASH_FUNCTIONS:
            raise HandshakeError(f"unknown Noise hash {hash_name!r}; supported: "
                                 f"{', '.join(HASHES)}")
        self._new, self.blocklen = _HASH_FUNCTIONS[hash_name]
        self.hashlen: int = self._new().digest_size

    def digest(self, data: bytes) -> bytes:
        return self._new(data).digest()

    def _pads(self, key: bytes) -> tuple[bytes, bytes]:
        """HMAC's inner and outer padded keys (RFC 2104, made as the stdlib's hmac.py makes
        them): HMAC(K, m) = H(K ^ opad || H(K ^ ipad || m))."""
        if len(key) > self.blocklen:
            key = self._new(key).digest()
        key = key.ljust(self.blocklen, b"\0")
        return key.translate(_IPAD), key.translate(_OPAD)

    def hmac(self, key: bytes, data: bytes) -> bytes:
        inner, outer = self._pads(key)
        return self._new(outer + self._new(inner + data).digest()).digest()

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
        """HKDF as Noise defines it (section 4.3): 2 or 3 outputs of HASHLEN bytes each."""
        new = self._new
        temp_key = self.hmac(chaining_key, ikm)
        inner, outer = self._pads(temp_key)  # once for all the outputs
        out: list[bytes] = []
        previous = b""
        for i in range(1, outputs + 1):
            previous = new(outer + new(inner + previous + bytes((i,))).digest()).digest()
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

    @classmethod
    def _derived(cls, key: bytes, cipher: str) -> CipherState:
        """A state for a key the HKDF just made (KEYLEN bytes, cipher already checked): the
        handshake makes four of these, so without re-checking what is known."""
        cs = cls.__new__(cls)
        cs._cipher, cs._key, cs._aead, cs.nonce = cipher, key, None, 0
        return cs

    @property
    def cipher(self) -> str:
        return self._cipher

    @property
    def key(self) -> bytes | None:
        return self._key

    @key.setter
    def key(self, key: bytes | None) -> None:
        self._key = None if key is None else _check_key("cipher key", key)
        self._aead = None

    def _cipher_object(self, key: bytes) -> ChaCha20Poly1305 | AESGCM:
        # Built once per key, at its first use, not once per message: a handshake key that
        # is replaced before it encrypts anything (IK's after "ee") never costs one.
        aead = self._aead
        if aead is None:
            aead = self._aead = (
                ChaCha20Poly1305(key) if self._cipher == "ChaChaPoly" else AESGCM(key))
        return aead

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
        key = self._key
        if key is None:
            return plaintext
        ciphertext = self._cipher_object(key).encrypt(self._nonce_bytes(), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Open ``ciphertext``; raises :class:`CryptoError` (and keeps the nonce) if it fails."""
        key = self._key
        if key is None:
            return ciphertext
        if len(ciphertext) < TAGLEN:
            raise CryptoError(f"ciphertext of {len(ciphertext)} bytes is shorter than its tag")
        try:
            plaintext = self._cipher_object(key).decrypt(self._nonce_bytes(), ciphertext, ad)
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
        self.cs = CipherState._derived(self._truncate(temp_k), self.cs.cipher)

    def mix_hash(self, data: bytes) -> None:
        self.h = self.hash.digest(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = self.hash.hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs = CipherState._derived(self._truncate(temp_k), self.cs.cipher)

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


@functools.lru_cache(maxsize=256)
def _initial_state(name: str, hash_name: str, prologue: bytes,
                   pre: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """(ck, h) after InitializeSymmetric(name), MixHash(prologue) and the pre-message keys
    ``pre`` (spec sections 5.3 and 7.1): the same for every handshake with the same prologue
    and the same static keys, so a responder hashes them once, not once per handshake."""
    ss = _SymmetricState(name.encode("ascii"), "ChaChaPoly", hash_name)
    ss.mix_hash(prologue)
    for key in pre:
        ss.mix_hash(key)
    return ss.ck, ss.h


@functools.lru_cache(maxsize=64)
def _needs(pattern: str, initiator: bool) -> tuple[bool, bool, bool]:
    """(needs s, needs rs, has a psk token) for one side of a pattern."""
    p = _PATTERNS[pattern]
    ours = p.initiator_pre if initiator else p.responder_pre
    theirs = p.responder_pre if initiator else p.initiator_pre
    sent = [m for i, m in enumerate(p.messages) if (i % 2 == 0) == initiator]
    return "s" in ours or any("s" in m for m in sent), "s" in theirs, p.has_psk


# --- HandshakeState ----------------------------------------------------------------------------


class _Keypair:
    __slots__ = ("private", "public", "raw")

    def __init__(self, private: bytes | X25519PrivateKey):
        self.raw = private if isinstance(private, bytes) else None
        """The raw private key of a static key pair (the key of its static-static secrets);
        None for a generated ephemeral one, whose private half stays inside the object."""
        self.private = (X25519PrivateKey.from_private_bytes(private)
                        if isinstance(private, bytes) else private)
        self.public = self.private.public_key().public_bytes_raw()


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
        on_remote_static: Callable[[bytes], None] | None = None,
    ):
        """``on_remote_static`` is told the peer's static key as soon as a message reveals
        it, before any DH with it; raising there refuses the message (the state stays as it
        was). A responder uses it to turn away a key no peer has for the price of one DH."""
        name = protocol_name(pattern, cipher, hash_name)
        self._defer_psk = defer_psk
        self._pattern = _PATTERNS[pattern]
        self._initiator = initiator
        self._check_inputs(pattern, s=s, rs=rs, psk=psk)
        self.on_remote_static = on_remote_static

        self._s = _static_keypair(_check_key("static private key (s)", s)) if s is not None \
            else None
        self._rs = _check_key("remote static public key (rs)", rs) if rs is not None else None
        self._psk = _check_key("pre-shared key (psk)", psk) if psk is not None else None
        self._e = _Keypair(_check_key("ephemeral private key (e)", e)) if e is not None else None
        self._re: bytes | None = None
        self._index = 0

        # Pre-messages: the initiator's first, then the responder's (spec section 7.1).
        pre = tuple(self._pre_message_key(ours=initiator) for _ in self._pattern.initiator_pre)
        pre += tuple(self._pre_message_key(ours=not initiator)
                     for _ in self._pattern.responder_pre)
        self._ss = _SymmetricState.__new__(_SymmetricState)
        self._ss.hash = _hash_for(hash_name)
        self._ss.ck, self._ss.h = _initial_state(name, hash_name, bytes(prologue), pre)
        self._ss.cs = CipherState(cipher=cipher)

    def _check_inputs(
        self, pattern: str, *, s: bytes | None, rs: bytes | None, psk: bytes | None
    ) -> None:
        needs_s, needs_rs, has_psk = _needs(pattern, self._initiator)
        role = "initiator" if self._initiator else "responder"
        # An unused key is refused rather than ignored: silently dropping it would let a caller
        # believe a static key or psk authenticates a session that it does not.
        for what, needed, value in (
            ("our static private key (s)", needs_s, s),
            ("the remote static public key (rs)", needs_rs, rs),
            ("a pre-shared key (psk)", has_psk and not self._defer_psk, psk),
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

    def _pre_message_key(self, *, ours: bool) -> bytes:
        # Every pre-message token is "s" (the patterns above): our static key or theirs.
        key = self._s.public if ours and self._s is not None else self._rs
        assert key is not None  # guaranteed by _check_inputs
        return key

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
        if ours.raw is not None and token == "ss":
            return _static_shared(ours.raw, theirs)  # two static keys: the same every time
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
                if self.on_remote_static is not None:
                    self.on_remote_static(self._rs)
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
