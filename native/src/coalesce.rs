//! Receive: inner packets to the TUN device, runs of in-order TCP segments of one flow glued
//! into one GSO super-packet. The specification is helper/offload.py `Coalescer`, which this
//! follows decision for decision (same runs, same frames, same drops).

use crate::header::fold;
use crate::tx::{GSO_TCPV4, GSO_TCPV6, PROTO_TCP, TCP_PSH, VNET_LEN};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_URG: u8 = 0x20;
pub const TCP_CWR: u8 = 0x80;
const NO_MERGE: u8 = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR;
pub const MAX_COALESCED: usize = 65535 - 60;
const F_NEEDS_CSUM: u8 = 1;
const PROTO_UDP_CSUM_OFF: u16 = 6;

/// Where frames go: the TUN device's fd in the module, a Vec in tests and fuzzing.
pub trait Out {
    /// Write one frame; false: the kernel refused it.
    fn write(&mut self, frame: &[u8]) -> bool;
}

impl Out for Vec<Vec<u8>> {
    fn write(&mut self, frame: &[u8]) -> bool {
        self.push(frame.to_vec());
        true
    }
}

/// Drop counters, indexed by `Reason`; names as in the Python path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    BadHeader = 0,
    BadTag,
    Replay,
    TooOld,
    BadSource,
    MalformedInner,
    TunRejected,
    EcnNotEctCe,
}

pub const REASONS: [&str; 8] = [
    "bad_header",
    "bad_tag",
    "replay",
    "too_old",
    "bad_source",
    "malformed_inner",
    "tun_rejected",
    "ecn_not_ect_ce",
];

#[derive(Clone, PartialEq, Eq, Default, Debug)]
struct Key {
    v4: bool,
    addrs: Vec<u8>,
    ports: [u8; 4],
    ack: u32,
    doff: u8,
    win: u16,
    opts: Vec<u8>,
    tos: [u8; 4],
}

/// The open run and the counters; one per receive loop.
pub struct Coalescer {
    pub vnet: bool,
    /// vnet header (10 bytes) + the first packet + the payloads of the others.
    frame: Vec<u8>,
    count: usize,
    key: Key,
    next_seq: u32,
    gso: usize,
    size: usize,
    hl: usize,
    ip_len: usize,
    v4: bool,
    psh: bool,
    owner: usize,
    pub counts: [u64; REASONS.len()],
    /// Outer CE marks passed on to ECN-capable inner packets (RFC 6040; not drops: the
    /// Python path's `DataPath.ecn_ce`).
    pub marks: u64,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Coalescer {
    pub fn new(vnet: bool) -> Coalescer {
        Coalescer {
            vnet,
            frame: Vec::with_capacity(65536 + 64),
            count: 0,
            key: Key::default(),
            next_seq: 0,
            gso: 0,
            size: 0,
            hl: 0,
            ip_len: 0,
            v4: true,
            psh: false,
            owner: 0,
            counts: [0; REASONS.len()],
            marks: 0,
        }
    }

    pub fn count(&mut self, r: Reason) {
        self.counts[r as usize] += 1;
    }

    /// One congestion mark passed on (counted apart from the drops).
    pub fn mark(&mut self) {
        self.marks += 1;
    }

    fn write(&mut self, out: &mut dyn Out, frame: &[u8]) {
        if !out.write(frame) {
            self.count(Reason::TunRejected);
        }
    }

    /// Queue one inner packet from `owner`; `flush` at the end of a receive batch. Without a
    /// vnet header (no offloads) every packet is written as it is.
    pub fn add(&mut self, out: &mut dyn Out, pkt: &[u8], partial: bool, owner: usize) {
        if !self.vnet {
            self.write(out, pkt);
            return;
        }
        let n = pkt.len();
        if partial && n >= 40 {
            if pkt[0] == 0x45 && pkt[9] == PROTO_TCP && pkt[6] & 0x3F == 0 {
                if self.count != 0 && self.fast_path(out, pkt) {
                    return;
                }
                self.add_tcp(out, pkt, 20, true, owner);
                return;
            }
            if pkt[0] >> 4 == 6 && pkt[6] == PROTO_TCP && n >= 60 {
                self.add_tcp(out, pkt, 40, false, owner);
                return;
            }
        }
        self.flush(out);
        self.emit_single(out, pkt, partial);
    }

    /// Append one segment's payload to the open run; a short or PSH segment ends the run (as
    /// the kernel's GRO does), so it is written out at once.
    fn append(&mut self, out: &mut dyn Out, payload: &[u8], seq: u32, flags: u8) {
        self.frame.extend_from_slice(payload);
        self.count += 1;
        self.size += payload.len();
        self.next_seq = seq.wrapping_add(payload.len() as u32);
        if payload.len() < self.gso || flags & TCP_PSH != 0 {
            self.psh = flags & TCP_PSH != 0;
            self.flush(out);
        }
    }

    /// The common case: the next in-order IPv4 segment of the open run (offload.py `add`'s
    /// inline branch, which does not compare the owner: the addresses decide).
    fn fast_path(&mut self, out: &mut dyn Out, pkt: &[u8]) -> bool {
        let n = pkt.len();
        let seq = be32(pkt, 24);
        let doff = pkt[32];
        let flags = pkt[33];
        let hl = 20 + (doff >> 4) as usize * 4;
        if hl > n {
            return false;
        }
        let payload = n - hl;
        let k = &self.key;
        if seq == self.next_seq
            && hl == self.hl
            && payload > 0
            && payload <= self.gso
            && flags & NO_MERGE == 0
            && pkt[20..24] == k.ports
            && be32(pkt, 28) == k.ack
            && be16(pkt, 34) == k.win
            && pkt[12..20] == k.addrs[..]
            && pkt[38..hl] == k.opts[..]
            && k.v4
            && [pkt[1], pkt[8], 0, 0] == k.tos
            && be16(pkt, 2) as usize == n
            && self.size + payload <= MAX_COALESCED
        {
            self.append(out, &pkt[hl..], seq, flags);
            return true;
        }
        false
    }

    /// Append a segment the sender flagged CONTINUATION of the previous one (the caller
    /// checked the counter) if the open run is `owner`'s (offload.py `continue_run`).
    pub fn continue_run(&mut self, out: &mut dyn Out, pkt: &[u8], owner: usize) -> bool {
        if !self.vnet || self.count == 0 || owner != self.owner || pkt.len() <= self.hl {
            return false;
        }
        let payload = pkt.len() - self.hl;
        if payload > self.gso || self.size + payload > MAX_COALESCED {
            return false;
        }
        let flags = pkt[self.ip_len + 13]; // hl >= ip_len + 20 (checked when the run began)
        if flags & NO_MERGE != 0 {
            return false;
        }
        self.frame.extend_from_slice(&pkt[self.hl..]);
        self.count += 1;
        self.size += payload;
        if payload < self.gso || flags & TCP_PSH != 0 {
            self.psh = flags & TCP_PSH != 0;
            self.flush(out);
        }
        true
    }

    /// Forget the open run without writing it (after a batch failed half-way).
    pub fn reset(&mut self) {
        self.frame.clear();
        self.count = 0;
        self.owner = 0;
    }

    fn emit_single(&mut self, out: &mut dyn Out, pkt: &[u8], partial: bool) {
        let mut hdr = [0u8; VNET_LEN];
        if partial {
            let n = pkt.len();
            let v = if n > 0 { pkt[0] >> 4 } else { 0 };
            let (ip_len, proto) = if v == 4 && n >= 20 {
                ((pkt[0] & 0x0F) as usize * 4, pkt[9])
            } else if v == 6 && n >= 40 {
                (40, pkt[6])
            } else {
                self.count(Reason::MalformedInner);
                return;
            };
            let off: u16 = if proto == PROTO_TCP {
                16
            } else {
                PROTO_UDP_CSUM_OFF
            };
            if ip_len < 20 || ip_len + off as usize + 2 > n {
                self.count(Reason::MalformedInner); // the checksum to complete lies outside
                return;
            }
            hdr[0] = F_NEEDS_CSUM;
            hdr[6..8].copy_from_slice(&(ip_len as u16).to_le_bytes());
            hdr[8..10].copy_from_slice(&off.to_le_bytes());
        }
        let mut f = Vec::with_capacity(VNET_LEN + pkt.len());
        f.extend_from_slice(&hdr);
        f.extend_from_slice(pkt);
        self.write(out, &f);
    }

    fn add_tcp(&mut self, out: &mut dyn Out, pkt: &[u8], ip_len: usize, v4: bool, owner: usize) {
        let th = ip_len;
        let n = pkt.len();
        let seq = be32(pkt, th + 4);
        let ack = be32(pkt, th + 8);
        let doff = pkt[th + 12];
        let flags = pkt[th + 13];
        let win = be16(pkt, th + 14);
        let hl = ip_len + (doff >> 4) as usize * 4;
        if doff >> 4 < 5 || hl > n {
            self.flush(out);
            self.count(Reason::MalformedInner); // no TCP header is shorter than 20 bytes
            return;
        }
        let payload = n - hl;
        let length = if v4 {
            be16(pkt, 2) as usize
        } else {
            be16(pkt, 4) as usize + 40
        };
        if payload == 0 || flags & NO_MERGE != 0 || length != n {
            self.flush(out);
            self.emit_single(out, pkt, true);
            return;
        }
        let key = Key {
            v4,
            addrs: if v4 {
                pkt[12..20].to_vec()
            } else {
                pkt[8..40].to_vec()
            },
            ports: pkt[th..th + 4].try_into().expect("4 bytes"),
            ack,
            doff,
            win,
            opts: pkt[th + 18..hl].to_vec(),
            tos: if v4 {
                [pkt[1], pkt[8], 0, 0]
            } else {
                pkt[0..4].try_into().expect("4")
            },
        };
        if self.count != 0
            && seq == self.next_seq
            && key == self.key
            && owner == self.owner
            && payload <= self.gso
            && self.size + payload <= MAX_COALESCED
        {
            self.append(out, &pkt[hl..], seq, flags);
            return;
        }
        self.flush(out);
        self.frame.clear();
        self.frame.extend_from_slice(&[0u8; VNET_LEN]);
        self.frame.extend_from_slice(pkt);
        self.key = key;
        self.owner = owner;
        self.count = 1;
        self.gso = payload;
        self.size = payload;
        self.hl = hl;
        self.ip_len = ip_len;
        self.v4 = v4;
        self.psh = false;
        self.next_seq = seq.wrapping_add(payload as u32);
        if flags & TCP_PSH != 0 {
            self.flush(out);
        }
    }

    pub fn flush(&mut self, out: &mut dyn Out) {
        if self.count == 0 {
            return;
        }
        let mut frame = std::mem::take(&mut self.frame);
        if self.count == 1 {
            self.count = 0;
            self.emit_single(out, &frame[VNET_LEN..], true);
            frame.clear();
            self.frame = frame;
            return;
        }
        let (hl, ip_len) = (self.hl, self.ip_len);
        let total = hl + self.size;
        let head = &mut frame[VNET_LEN..VNET_LEN + hl];
        if self.psh {
            head[ip_len + 13] |= TCP_PSH; // the run's last segment pushed; so does the whole
        }
        let (pseudo, gso_type) = if self.v4 {
            head[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            head[10] = 0;
            head[11] = 0;
            let c = !(fold(crate::header::word_sum(&head[..ip_len])) as u16);
            head[10..12].copy_from_slice(&c.to_be_bytes());
            (
                crate::header::word_sum(&head[12..20]) + PROTO_TCP as u64,
                GSO_TCPV4,
            )
        } else {
            head[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            (
                crate::header::word_sum(&head[8..40]) + PROTO_TCP as u64,
                GSO_TCPV6,
            )
        };
        let tcp = fold(pseudo + (total - ip_len) as u64) as u16;
        head[ip_len + 16..ip_len + 18].copy_from_slice(&tcp.to_be_bytes());
        frame[0] = F_NEEDS_CSUM;
        frame[1] = gso_type;
        frame[2..4].copy_from_slice(&(hl as u16).to_le_bytes());
        frame[4..6].copy_from_slice(&(self.gso as u16).to_le_bytes());
        frame[6..8].copy_from_slice(&(ip_len as u16).to_le_bytes());
        frame[8..10].copy_from_slice(&16u16.to_le_bytes());
        self.write(out, &frame);
        frame.clear();
        self.frame = frame;
        self.count = 0;
    }
}
