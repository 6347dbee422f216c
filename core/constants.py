"""Every Tunseal protocol constant, named once, with the reason beside it.

docs/PROTOCOL.md is the normative description; this file is its mirror in code.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag, StrEnum

# --- encapsulation header -------------------------------------------------------------------

VERSION = 1
"""VER nibble. A receiver drops any other version (counted as ``bad_header``)."""

FIXED_HEADER_LEN = 12
"""VER/TYPE/HLEN/OLDPACKETLEN + DeviceID/EncapID + Flags/Checksum: three 32-bit words."""

MAX_HEADER_LEN = 255 * 4
"""HLEN is 8 bits counting 32-bit words, so a header (options included) is at most 1020 bytes."""

MAX_INNER_LEN = 0xFFFF
"""OLDPACKETLEN is 16 bits; an inner packet never exceeds 65535 bytes (the IPv4/IPv6 limit)."""


class PacketType(IntEnum):
    """The TYPE nibble."""

    DATA = 1
    HANDSHAKE_INIT = 2
    HANDSHAKE_RESP = 3
    COOKIE = 4
    KEEPALIVE = 5
    CONTROL = 6
    ENROL = 7
    """A laptop enrolling with a gateway by an invitation (core/enrol.py, PROTOCOL.md 17)."""
    ENROL_REPLY = 8
    """The gateway's answer to an ENROL: accepted (with the laptop's settings) or refused."""


class Flag(IntFlag):
    """The Flags field. A receiver rejects a packet carrying any flag not listed here."""

    AUTHENTICATED = 0x8000
    """Header and payload are covered by an AEAD tag (or, for handshakes, by the Noise MACs)."""
    ENCRYPTED = 0x4000
    """The payload is AEAD ciphertext."""
    KEY_PRESENT = 0x2000
    """The packet carries key material (a handshake message: ephemeral keys, sealed statics)."""
    CSUM_PARTIAL = 0x1000
    """The inner packet's TCP/UDP checksum holds only the pseudo-header sum; the receiver must
    complete it (the sender split a kernel TSO super-packet and skipped per-segment checksums)."""
    CONTINUATION = 0x0800
    """Advisory, sealed DATA only: this TCP segment continues the packet sealed just before it
    (counter - 1) in the same burst: same flow, addresses, ack, window and options; its sequence
    number follows on. A receiver may glue such runs into one packet without comparing headers;
    ignoring the flag is always correct (every segment is a complete packet)."""


KNOWN_FLAGS = int(Flag.AUTHENTICATED | Flag.ENCRYPTED | Flag.KEY_PRESENT | Flag.CSUM_PARTIAL
                  | Flag.CONTINUATION)

OPTION_CRITICAL = 0x80
"""Option types with the top bit set must be understood: an unknown one rejects the packet.
Unknown option types without it are skipped."""

OPTION_END = 0x00
"""Ends the option list; every byte after it up to HLEN*4 is padding and must be zero."""


class Option(IntEnum):
    """TLV option types (Type 8 bits, Length 8 bits = length of Data, Data)."""

    COUNTER = 0x81
    """8 bytes, big-endian 64-bit per-session packet counter: the AEAD nonce. Critical."""
    RECEIVER_INDEX = 0x82
    """4 bytes: the session index the *receiver* chose in the handshake. Critical."""
    SENDER_INDEX = 0x83
    """4 bytes: the index the sender of a handshake message chose for its new session. Critical."""
    MAC1 = 0x84
    """16 bytes: keyed BLAKE2s over the handshake packet, keyed by the responder's identity."""
    MAC2 = 0x85
    """16 bytes: keyed BLAKE2s over the handshake packet, keyed by a cookie (all zero if none)."""
    CONTROL_KIND = 0x86
    """1 byte: what a CONTROL packet carries (see :class:`ControlKind`). Critical."""
    ORIGIN = 0x87
    """16 bytes: the initiating end's origin ID, in psk/rotating initiations. Critical: the
    responder refuses its own (a reflected initiation) and mixes it into the Noise prologue."""
    PAD_HINT = 0x01
    """Any length: ignored. Lets a sender pad a packet (non-critical example option)."""


class ControlKind(IntEnum):
    """Payload kinds of CONTROL packets (sealed like data)."""

    PROBE = 1
    """A liveness/RTT/MTU probe: payload = 8-byte probe id + 8-byte send time + padding."""
    PROBE_REPLY = 2
    """Echoes a PROBE's id and send time so the prober measures RTT and the path MTU."""
    ICMP_RELAY = 3
    """An ICMP error about an inner packet, for the far end to deliver to its inner sender."""


# --- crypto ---------------------------------------------------------------------------------

KEY_LEN = 32
TAG_LEN = 16
"""Poly1305 and GCM tags are both 16 bytes."""
MAC_LEN = 16
"""mac1/mac2 are BLAKE2s truncated to 128 bits, as in WireGuard: enough against forgery by
anyone who does not know the responder's public key / the cookie."""
COOKIE_LEN = 16
COOKIE_NONCE_LEN = 12
TIMESTAMP_LEN = 12
"""TAI64N: 8 bytes of seconds + 4 bytes of nanoseconds, big-endian."""
ORIGIN_LEN = 16
"""An end's origin ID: random, chosen once per tunnel and kept across restarts. 128 bits make
two ends choosing the same one as unlikely as guessing a key."""

NOISE_PROLOGUE = b"Tunseal v1"
"""Mixed into every Noise handshake so a Tunseal handshake never verifies in another protocol."""

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"


# --- the vocabulary of profiles, gateway files and IPC ------------------------------------------
# StrEnums: each member is its string, so files and the control socket read and write the same
# words as ever ("psk" == Mode.PSK), and callers ask the member what they need to know.


class Mode(StrEnum):
    """A tunnel's security mode (docs/PROFILE.md)."""

    PLAIN = "plain"
    PSK = "psk"
    ROTATING = "rotating"
    EPHEMERAL = "ephemeral"

    @property
    def sealed(self) -> bool:
        """Encrypted and authenticated: every mode but ``plain``."""
        return self is not Mode.PLAIN

    @property
    def needs_psk(self) -> bool:
        """The pre-shared key is the mode's only secret (``psk``, ``rotating``)."""
        return self in (Mode.PSK, Mode.ROTATING)

    @property
    def uses_static_keys(self) -> bool:
        """Each end has a static key pair and knows the other's public key (``ephemeral``)."""
        return self is Mode.EPHEMERAL

    def pattern(self, has_psk: bool) -> str:
        """The Noise handshake pattern; "" for ``plain``, which has no handshake."""
        if self is Mode.EPHEMERAL:
            return "IKpsk2" if has_psk else "IK"
        return "NNpsk0" if self.needs_psk else ""


class Cipher(StrEnum):
    CHACHA20_POLY1305 = "chacha20-poly1305"
    AES_256_GCM = "aes-256-gcm"
    AES_128_GCM = "aes-128-gcm"

    @property
    def noise_name(self) -> str:
        """The cipher's name in a Noise protocol name."""
        return "ChaChaPoly" if self is Cipher.CHACHA20_POLY1305 else "AESGCM"


class TransportKind(StrEnum):
    """How the outer packets travel: UDP datagrams, or raw IP protocol RAW_IP_PROTOCOL."""

    UDP = "udp"
    RAW = "raw"

    @property
    def header_len(self) -> int:
        """Bytes of this transport's own header in each outer packet (beside the IP header)."""
        return 8 if self is TransportKind.UDP else 0


MODES = tuple(Mode)
DEFAULT_MODE = Mode.EPHEMERAL

CIPHERS = tuple(Cipher)
DEFAULT_CIPHER = Cipher.AES_256_GCM
"""AES-GCM runs on the AES and carry-less-multiply instructions every x86-64 and ARMv8 laptop
has: under callgrind our whole per-segment path costs ~28 % fewer instructions with it than
with ChaCha20-Poly1305 (bench/micro.py shows the AEAD alone ~3x faster). ChaCha20-Poly1305
remains the choice for CPUs without AES instructions."""

TRANSPORTS = tuple(TransportKind)
DEFAULT_TRANSPORT = TransportKind.UDP
DEFAULT_PORT = 51900
RAW_IP_PROTOCOL = 253
"""IANA 'use for experimentation and testing' (RFC 3692): a raw-IP Tunseal tunnel must not claim
a registered protocol number, and 253 crosses Linux masquerade (see docs/PROTOCOL.md)."""

# --- timers and limits (WireGuard's schedule for ephemeral; ours for rotating) -----------------

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
"""Counters stay below this so a nonce never repeats (margin for the replay window)."""
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0

ROTATING_REKEY_AFTER_TIME = 600.0
"""`rotating` mode default: a new session every 10 minutes..."""
ROTATING_REKEY_AFTER_MESSAGES = 1 << 24
"""...or every 16.7 M packets (about 23 GB at 1400 bytes), whichever comes first."""

REPLAY_WINDOW = 4096
"""Packets accepted out of order behind the highest counter seen (RFC 6479 bitmap)."""

HANDSHAKE_RATE_PER_SOURCE = 20.0
"""Handshake initiations per second accepted from one source address before cookies are due."""
HANDSHAKE_LOAD_THRESHOLD = 200
"""Initiations per second (all sources) above which the responder demands a valid mac2."""
COOKIE_SECRET_LIFETIME = 120.0

DEFAULT_MTU = 1408
"""1500 minus the worst-case data overhead: IPv6 40 + UDP 8 + Tunseal data header 28 + tag 16 = 92.
The same default therefore works over an IPv4 or an IPv6 outer path."""
DATA_HEADER_LEN = 28
"""Fixed header + COUNTER (2+8) + RECEIVER_INDEX (2+4) = 28 bytes, already 32-bit aligned."""
