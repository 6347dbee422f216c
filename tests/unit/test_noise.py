"""core.noise against the cacophony Noise vectors, and its failure behaviour."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CryptoError, HandshakeError, TunsealError
from core.noise import (
    CIPHERS,
    HASHES,
    MAX_NONCE,
    CipherState,
    HandshakeState,
    generate_private_key,
    protocol_name,
    public_key,
)

# The vectors live outside the repo (shared with other implementations); never copy them in.
_DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SHARED_DIR = Path(os.environ.get("TUNSEAL_SHARED_DIR", _DEFAULT_SHARED))
VECTORS_FILE = SHARED_DIR / "vectors" / "noise-ik-cacophony.json"


def _load_vectors() -> tuple[list[dict[str, Any]], str | None]:
    try:
        data = json.loads(VECTORS_FILE.read_text())
        return list(data["vectors"]), None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], (
            f"cannot read the Noise test vectors at {VECTORS_FILE}: {exc!r}. "
            "They live in ../shared/vectors/ next to the repository; set TUNSEAL_SHARED_DIR "
            "to the directory holding vectors/ if the shared tree is elsewhere."
        )


VECTORS, VECTORS_PROBLEM = _load_vectors()
# A missing file must fail the run, not skip it: one placeholder case carries the reason.
_VECTOR_PARAMS = (
    [pytest.param(v, id=v["protocol_name"]) for v in VECTORS]
    if VECTORS_PROBLEM is None
    else [pytest.param(None, id="vectors-missing")]
)

PROLOGUE = b"Tunseal test"
PSK = bytes(range(32))


def _vector_or_fail(vector: dict[str, Any] | None) -> dict[str, Any]:
    if vector is None:
        pytest.fail(VECTORS_PROBLEM or "no vectors")
    return vector


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


# --- cacophony vectors -------------------------------------------------------------------------


def test_vector_file_covers_every_suite() -> None:
    if VECTORS_PROBLEM is not None:
        pytest.fail(VECTORS_PROBLEM)
    names = {v["protocol_name"] for v in VECTORS}
    expected = {
        protocol_name(pattern, cipher, hash_name)
        for pattern in ("IK", "IKpsk2")
        for cipher in CIPHERS
        for hash_name in HASHES
    }
    assert names == expected
    assert len(VECTORS) == 16


@pytest.mark.parametrize("vector", _VECTOR_PARAMS)
def test_cacophony_vector(vector: dict[str, Any] | None) -> None:
    v = _vector_or_fail(vector)
    _noise, pattern, dh, cipher, hash_name = v["protocol_name"].split("_")
    assert dh == "25519"
    assert protocol_name(pattern, cipher, hash_name) == v["protocol_name"]
    init_psk = _hex(v["init_psks"][0]) if "init_psks" in v else None
    resp_psk = _hex(v["resp_psks"][0]) if "resp_psks" in v else None

    init = HandshakeState(
        pattern,
        True,
        cipher=cipher,
        hash_name=hash_name,
        prologue=_hex(v["init_prologue"]),
        s=_hex(v["init_static"]),
        rs=_hex(v["init_remote_static"]),
        psk=init_psk,
        e=_hex(v["init_ephemeral"]),
    )
    resp = HandshakeState(
        pattern,
        False,
        cipher=cipher,
        hash_name=hash_name,
        prologue=_hex(v["resp_prologue"]),
        s=_hex(v["resp_static"]),
        psk=resp_psk,
        e=_hex(v["resp_ephemeral"]),
    )
    messages = v["messages"]
    handshake, transport = messages[:2], messages[2:]

    assert resp.remote_static is None
    for i, m in enumerate(handshake):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        payload = _hex(m["payload"])
        wire = sender.write_message(payload)
        assert wire.hex() == m["ciphertext"], f"handshake message {i + 1}"
        assert receiver.read_message(wire) == payload

    assert init.complete and resp.complete
    assert init.handshake_hash.hex() == v["handshake_hash"]
    assert resp.handshake_hash.hex() == v["handshake_hash"]
    assert resp.remote_static == public_key(_hex(v["init_static"]))
    assert init.remote_static == _hex(v["init_remote_static"])

    init_send, init_recv = init.split()
    resp_recv, resp_send = resp.split()
    assert init.split_keys() == resp.split_keys() == (init_send.key, init_recv.key)
    for i, m in enumerate(transport):
        # Transport messages alternate initiator->responder, responder->initiator.
        send, recv = (init_send, resp_recv) if i % 2 == 0 else (resp_send, init_recv)
        payload = _hex(m["payload"])
        wire = send.encrypt_with_ad(b"", payload)
        assert wire.hex() == m["ciphertext"], f"transport message {i + 1}"
        assert recv.decrypt_with_ad(b"", wire) == payload


# An independent check of NNpsk0 (the psk-before-e ordering is not covered by the IK file):
# Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s from the public cacophony vector set
# (haskell-cryptography/cacophony, vectors/cacophony.txt @ 36c1e5c3).
NNPSK0_VECTOR: dict[str, Any] = {
    "prologue": "4a6f686e2047616c74",
    "psk": "54686973206973206d7920417573747269616e20706572737065637469766521",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
            "fda936bec35a8adfdff198386f7d5475880897edaaf7495314c99095a2e4d66a",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
            "4cd2a371993ba41ea11448024fca32766b169183c9e691a7a433279da7e729",
        ),
        ("462e20412e20486179656b", "bc44da303ae0beb08075fc4eb4e58235c67c2d1f53a4f2fff0bca7"),
        ("4361726c204d656e676572", "416d1af83e9fa6966ce4e871156b131aa9bd7e9a1d6f8794f4872a"),
        (
            "4a65616e2d426170746973746520536179",
            "8a7d81b77bcc6c072f2b807da066efba6b5fab9edf71a7faceb2c8454b0cfef608",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "1e2ee010f72894824a25a867664ff298f2548a145dc4e9d27b1cad83f32fa7c54d69dc3279",
        ),
    ],
}


def test_nnpsk0_cacophony_vector() -> None:
    v = NNPSK0_VECTOR
    common: dict[str, Any] = {"prologue": _hex(v["prologue"]), "psk": _hex(v["psk"])}
    init = HandshakeState("NNpsk0", True, e=_hex(v["init_ephemeral"]), **common)
    resp = HandshakeState("NNpsk0", False, e=_hex(v["resp_ephemeral"]), **common)
    for i, (payload_hex, wire_hex) in enumerate(v["messages"][:2]):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        wire = sender.write_message(_hex(payload_hex))
        assert wire.hex() == wire_hex
        assert receiver.read_message(wire) == _hex(payload_hex)
    init_send, init_recv = init.split()
    resp_recv, resp_send = resp.split()
    for i, (payload_hex, wire_hex) in enumerate(v["messages"][2:]):
        send, recv = (init_send, resp_recv) if i % 2 == 0 else (resp_send, init_recv)
        wire = send.encrypt_with_ad(b"", _hex(payload_hex))
        assert wire.hex() == wire_hex
        assert recv.decrypt_with_ad(b"", wire) == _hex(payload_hex)


# --- round trips -------------------------------------------------------------------------------


def _ik_pair(
    pattern: str = "IK", *, cipher: str = "ChaChaPoly", hash_name: str = "BLAKE2s"
) -> tuple[HandshakeState, HandshakeState]:
    init_s, resp_s = generate_private_key(), generate_private_key()
    psk = PSK if "psk" in pattern else None
    init = HandshakeState(
        pattern,
        True,
        cipher=cipher,
        hash_name=hash_name,
        prologue=PROLOGUE,
        s=init_s,
        rs=public_key(resp_s),
        psk=psk,
    )
    resp = HandshakeState(
        pattern, False, cipher=cipher, hash_name=hash_name, prologue=PROLOGUE, s=resp_s, psk=psk
    )
    return init, resp


def _run(init: HandshakeState, resp: HandshakeState) -> None:
    assert resp.read_message(init.write_message(b"hello")) == b"hello"
    assert init.read_message(resp.write_message(b"welcome")) == b"welcome"


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("hash_name", HASHES)
def test_nnpsk0_round_trip(cipher: str, hash_name: str) -> None:
    init = HandshakeState("NNpsk0", True, cipher=cipher, hash_name=hash_name, psk=PSK)
    resp = HandshakeState("NNpsk0", False, cipher=cipher, hash_name=hash_name, psk=PSK)
    _run(init, resp)
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    assert init.remote_static is None and resp.remote_static is None

    init_send, init_recv = init.split()
    resp_recv, resp_send = resp.split()
    for n in range(3):
        wire = init_send.encrypt_with_ad(b"ad", b"to responder %d" % n)
        assert resp_recv.decrypt_with_ad(b"ad", wire) == b"to responder %d" % n
        wire = resp_send.encrypt_with_ad(b"", b"to initiator %d" % n)
        assert init_recv.decrypt_with_ad(b"", wire) == b"to initiator %d" % n
    # The two directions use different keys.
    assert init_send.key != init_recv.key


def test_fresh_ephemerals_give_fresh_sessions() -> None:
    first, second = _ik_pair("IKpsk2"), _ik_pair("IKpsk2")
    _run(*first)
    _run(*second)
    assert first[0].split_keys() != second[0].split_keys()


# --- authentication failures -------------------------------------------------------------------


def test_ikpsk2_wrong_psk_fails() -> None:
    init_s, resp_s = generate_private_key(), generate_private_key()
    init = HandshakeState("IKpsk2", True, s=init_s, rs=public_key(resp_s), psk=PSK)
    resp = HandshakeState("IKpsk2", False, s=resp_s, psk=bytes(32))
    resp.read_message(init.write_message())  # the psk only enters in message 2
    with pytest.raises(CryptoError):
        init.read_message(resp.write_message())
    assert not init.complete


def test_nnpsk0_wrong_psk_fails() -> None:
    init = HandshakeState("NNpsk0", True, psk=PSK)
    resp = HandshakeState("NNpsk0", False, psk=bytes(32))
    with pytest.raises(CryptoError):
        resp.read_message(init.write_message(b"x"))


def test_ik_wrong_responder_static_fails() -> None:
    resp_s, impostor = generate_private_key(), generate_private_key()
    init = HandshakeState("IK", True, s=generate_private_key(), rs=public_key(impostor))
    resp = HandshakeState("IK", False, s=resp_s)
    with pytest.raises(CryptoError):
        resp.read_message(init.write_message())


def _first_message(pattern: str) -> tuple[bytes, dict[str, Any]]:
    """An initiator's first message, and the responder arguments that accept it."""
    psk = PSK if "psk" in pattern else None
    if pattern == "NNpsk0":
        return HandshakeState(pattern, True, psk=psk).write_message(b"payload"), {"psk": psk}
    resp_s = generate_private_key()
    init = HandshakeState(pattern, True, s=generate_private_key(), rs=public_key(resp_s), psk=psk)
    return init.write_message(b"payload"), {"s": resp_s, "psk": psk}


@pytest.mark.parametrize("pattern", ["IK", "IKpsk2", "NNpsk0"])
def test_every_tampered_byte_is_rejected(pattern: str) -> None:
    message, resp_args = _first_message(pattern)
    for i in range(len(message)):
        tampered = bytearray(message)
        tampered[i] ^= 0x01
        with pytest.raises(CryptoError):
            HandshakeState(pattern, False, **resp_args).read_message(bytes(tampered))
    assert HandshakeState(pattern, False, **resp_args).read_message(message) == b"payload"


def test_failed_read_leaves_state_usable() -> None:
    # A forged response must not cost the initiator its handshake: the genuine one still works.
    init, resp = _ik_pair("IKpsk2")
    resp.read_message(init.write_message())
    genuine = resp.write_message(b"ok")
    forged = bytearray(genuine)
    forged[-1] ^= 0x80
    with pytest.raises(CryptoError):
        init.read_message(bytes(forged))
    with pytest.raises(HandshakeError):
        init.read_message(genuine[:40])
    assert init.read_message(genuine) == b"ok"
    assert init.handshake_hash == resp.handshake_hash
    assert init.split_keys() == resp.split_keys()


def test_low_order_ephemeral_is_rejected() -> None:
    resp_s = generate_private_key()
    resp = HandshakeState("IK", False, s=resp_s)
    # An all-zero ephemeral is a low-order point: the es DH result would be all zero.
    with pytest.raises(CryptoError, match="low-order"):
        resp.read_message(bytes(32) + bytes(48) + bytes(16))


def test_low_order_remote_static_is_rejected() -> None:
    init = HandshakeState("IK", True, s=generate_private_key(), rs=bytes(32))
    with pytest.raises(CryptoError, match="low-order"):
        init.write_message()


# --- state and argument errors -----------------------------------------------------------------


def test_out_of_turn() -> None:
    init, resp = _ik_pair()
    with pytest.raises(HandshakeError, match="out of turn"):
        resp.write_message()
    with pytest.raises(HandshakeError, match="out of turn"):
        init.read_message(b"\x00" * 100)
    msg1 = init.write_message()
    with pytest.raises(HandshakeError, match="out of turn"):
        init.write_message()
    resp.read_message(msg1)
    init.read_message(resp.write_message())
    with pytest.raises(HandshakeError, match="complete"):
        init.write_message()
    with pytest.raises(HandshakeError, match="complete"):
        resp.read_message(b"")


def test_nothing_final_before_completion() -> None:
    init, _resp = _ik_pair()
    with pytest.raises(HandshakeError):
        init.split()
    with pytest.raises(HandshakeError):
        init.split_keys()
    with pytest.raises(HandshakeError):
        _ = init.handshake_hash


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_truncated_messages(length: int) -> None:
    init, resp = _ik_pair()
    message = init.write_message(b"p")
    with pytest.raises(HandshakeError, match="truncated"):
        resp.read_message(message[: min(length, 32 + 48 + 15)])


def test_missing_and_unused_inputs() -> None:
    key = generate_private_key()
    with pytest.raises(HandshakeError, match="rs"):
        HandshakeState("IK", True, s=key)
    with pytest.raises(HandshakeError, match=r"\(s\)"):
        HandshakeState("IK", False)
    with pytest.raises(HandshakeError, match="psk"):
        HandshakeState("IKpsk2", False, s=key)
    with pytest.raises(HandshakeError, match="psk"):
        HandshakeState("NNpsk0", True)
    with pytest.raises(HandshakeError, match="does not use"):
        HandshakeState("IK", False, s=key, psk=PSK)
    with pytest.raises(HandshakeError, match="does not use"):
        HandshakeState("NNpsk0", True, psk=PSK, s=key)


@pytest.mark.parametrize("field", ["s", "rs", "psk", "e"])
@pytest.mark.parametrize("length", [0, 31, 33])
def test_wrong_length_keys(field: str, length: int) -> None:
    kwargs: dict[str, Any] = {
        "s": generate_private_key(),
        "rs": public_key(generate_private_key()),
        "psk": PSK,
        "e": generate_private_key(),
    }
    kwargs[field] = bytes(length)
    with pytest.raises(HandshakeError, match="32 bytes"):
        HandshakeState("IKpsk2", True, **kwargs)
    with pytest.raises(HandshakeError, match="32 bytes"):
        public_key(bytes(length))


def test_unknown_suite() -> None:
    assert protocol_name("IKpsk2", "ChaChaPoly", "BLAKE2s") == (
        "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    )
    with pytest.raises(HandshakeError, match="pattern"):
        protocol_name("XX", "ChaChaPoly", "BLAKE2s")
    with pytest.raises(HandshakeError, match="cipher"):
        HandshakeState("NNpsk0", True, psk=PSK, cipher="AES")
    with pytest.raises(HandshakeError, match="hash"):
        HandshakeState("NNpsk0", True, psk=PSK, hash_name="MD5")


# --- CipherState -------------------------------------------------------------------------------


def test_cipherstate_without_key_is_identity() -> None:
    cs = CipherState()
    assert cs.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.decrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.nonce == 0


@pytest.mark.parametrize("cipher", CIPHERS)
def test_cipherstate_failed_decrypt_keeps_nonce(cipher: str) -> None:
    send, recv = CipherState(PSK, cipher=cipher), CipherState(PSK, cipher=cipher)
    wire = send.encrypt_with_ad(b"ad", b"data")
    with pytest.raises(CryptoError):
        recv.decrypt_with_ad(b"other ad", wire)
    with pytest.raises(CryptoError):
        recv.decrypt_with_ad(b"ad", wire[:10])
    assert recv.nonce == 0
    assert recv.decrypt_with_ad(b"ad", wire) == b"data"
    assert recv.nonce == 1


def test_cipherstate_refuses_reserved_nonce() -> None:
    cs = CipherState(PSK, nonce=MAX_NONCE - 1)
    cs.encrypt_with_ad(b"", b"last")
    with pytest.raises(CryptoError, match="exhausted"):
        cs.encrypt_with_ad(b"", b"one too many")


# --- fuzz --------------------------------------------------------------------------------------

_RESPONDER_S = generate_private_key()


@pytest.mark.parametrize("pattern", ["IK", "IKpsk2", "NNpsk0"])
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=256))
def test_fuzz_responder_read(pattern: str, data: bytes) -> None:
    kwargs: dict[str, Any] = {"psk": PSK} if "psk" in pattern else {}
    if pattern.startswith("IK"):
        kwargs["s"] = _RESPONDER_S
    resp = HandshakeState(pattern, False, **kwargs)
    try:
        resp.read_message(data)
    except (HandshakeError, CryptoError) as exc:
        assert isinstance(exc, TunsealError)
    else:  # pragma: no cover - forging a valid message at random would be a break of Noise
        pytest.fail("arbitrary bytes were accepted as a handshake message")
    assert not resp.complete


# --- what a gateway keeps between handshakes (core/noise.py, bench/README.md "Gateway") ---------


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("key_len", [0, 32, 64, 128, 129, 200])
def test_hmac_and_hkdf_match_the_stdlib_hmac(hash_name: str, key_len: int) -> None:
    """The hashlib-based HMAC (its pads made once per HKDF) is RFC 2104 HMAC: compared with
    the standard library's own for every hash, keys shorter and longer than a block."""
    import hashlib
    import hmac

    from core import noise

    h = noise._hash_for(hash_name)
    name = {"BLAKE2s": "blake2s", "BLAKE2b": "blake2b", "SHA256": "sha256",
            "SHA512": "sha512"}[hash_name]
    key, data = os.urandom(key_len), os.urandom(77)
    assert h.hmac(key, data) == hmac.digest(key, data, name)
    assert h.digest(data) == hashlib.new(name, data).digest()
    ck = os.urandom(h.hashlen)
    temp = hmac.digest(ck, data, name)
    o1 = hmac.digest(temp, b"\x01", name)
    o2 = hmac.digest(temp, o1 + b"\x02", name)
    o3 = hmac.digest(temp, o2 + b"\x03", name)
    assert h.hkdf(ck, data, 2) == [o1, o2]
    assert h.hkdf(ck, data, 3) == [o1, o2, o3]


def test_static_static_secret_is_kept_and_equals_the_dh() -> None:
    from core import noise

    a, b = generate_private_key(), generate_private_key()
    noise._static_shared.cache_clear()
    first = noise._static_shared(a, public_key(b))
    assert noise._static_shared(a, public_key(b)) == first
    assert noise._static_shared.cache_info().hits == 1
    assert noise._static_shared(b, public_key(a)) == first  # a DH, both ways
    assert noise._static_shared.cache_info().maxsize == noise.STATIC_DH_CACHE
    # A refused key is refused every time: failures are not kept.
    for _ in range(2):
        with pytest.raises(CryptoError, match="low-order"):
            noise._static_shared(a, bytes(32))


def test_handshakes_with_kept_state_still_match_each_other() -> None:
    """Many handshakes between the same two static keys (kept initial state and ss secret)
    and with other keys in between: every pair agrees, and no two sessions share keys."""
    resp_s = generate_private_key()
    statics = [generate_private_key() for _ in range(3)]
    seen: set[bytes] = set()
    for init_s in statics * 3:
        init = HandshakeState("IK", True, prologue=PROLOGUE, s=init_s, rs=public_key(resp_s))
        resp = HandshakeState("IK", False, prologue=PROLOGUE, s=resp_s)
        assert resp.read_message(init.write_message(b"ts")) == b"ts"
        assert init.read_message(resp.write_message()) == b""
        assert resp.remote_static == public_key(init_s)
        assert init.split_keys() == resp.split_keys()
        seen.update(init.split_keys())
    assert len(seen) == 2 * 9


def test_on_remote_static_refuses_before_the_ss_dh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A responder told the initiator's key can refuse it before the ss DH: one DH (es) was
    spent, the state is as it was, and the same message is accepted once the key is known."""
    from core import noise

    resp_s, init_s = generate_private_key(), generate_private_key()
    message = HandshakeState("IK", True, s=init_s, rs=public_key(resp_s)).write_message(b"hi")
    known: set[bytes] = set()
    told: list[bytes] = []

    def check(key: bytes) -> None:
        told.append(key)
        if key not in known:
            raise HandshakeError("no peer has this key")

    dhs: list[str] = []
    real_dh, real_shared = noise._dh, noise._static_shared
    monkeypatch.setattr(noise, "_dh", lambda *a: (dhs.append("dh"), real_dh(*a))[1])
    monkeypatch.setattr(noise, "_static_shared",
                        lambda *a: (dhs.append("ss"), real_shared(*a))[1])
    resp = HandshakeState("IK", False, s=resp_s, on_remote_static=check)
    with pytest.raises(HandshakeError, match="no peer"):
        resp.read_message(message)
    assert told == [public_key(init_s)] and dhs == ["dh"] and resp.remote_static is None
    known.add(public_key(init_s))
    real_shared.cache_clear()
    assert resp.read_message(message) == b"hi"
    assert dhs == ["dh", "dh", "ss", "dh"]  # es, then ss: not kept yet, so computed once
    again = HandshakeState("IK", False, s=resp_s, on_remote_static=check)
    dhs.clear()
    assert again.read_message(message) == b"hi"
    assert dhs == ["dh", "ss"]  # es, and the kept ss


def test_hmac_blake2s_is_the_stdlib_hmac() -> None:
    import hashlib
    import hmac

    from core import noise

    for key in (b"", os.urandom(16), os.urandom(32), os.urandom(64), os.urandom(65)):
        data = os.urandom(100)
        assert noise.hmac_blake2s(key, data) == hmac.digest(key, data, hashlib.blake2s)
