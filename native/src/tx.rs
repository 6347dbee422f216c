//! Transmit: cut a TSO frame (virtio-net header + TCP/IP super-packet) into segments and seal
//! each straight into the GSO output buffer. The specification is helper/offload.py
//! `seal_tso`; the bytes on the wire are the same for the same keys and counters.

use crate::header::DATA_HEADER_LEN;
use crate::header::{fold, write_sealed, F_CONTINUATION, F_CSUM_PARTIAL, TAG_LEN};
use crate::keys::Keypair;

pub const VNET_LEN: usize = 10;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;
pub const PROTO_TCP: u8 = 6;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_CWR: u8 = 0x80;
/// helper/offload.py `_GSO_BUDGET`: bytes of sealed datagrams per GSO send.
pub const GSO_BUDGET: usize = 65000;
/// helper/transport.py MAX_GSO_SEGMENTS (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// A TCP super-packet parsed once (offload.py `_Tso.parse`).
#[derive(Debug)]
pub struct Tso {
    pub v4: bool,
    pub ip_len: usize,
    pub hl: usize,
    pub total: usize,
    pub gso: usize,
    seq0: u32,
    flags: u8,
    mid_flags: u8,
    ip_id0: u16,
    /// IPv4: the header words that never change, summed (mod 0xFFFF).
    ip_base: u64,
    /// The TCP pseudo-header's addresses + protocol, summed (mod 0xFFFF).
    pseudo: u64,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn sum_words(b: &[u8]) -> u64 {
    crate::header::word_sum(b)
}

impl Tso {
    /// None unless `frame` is a TCP TSO frame we can cut (IPv4 without options, or IPv6 with
    /// TCP right after the fixed header).
    pub fn parse(frame: &[u8], mtu: usize) -> Option<Tso> {
        if frame.len() < VNET_LEN {
            return None;
        }
        let gso_type = frame[1];
        let gso_size = le16(frame, 4) as usize;
        let ip_len = le16(frame, 6) as usize;
        let pkt = &frame[VNET_LEN..];
        let total = pkt.len();
        let kind = gso_type & !GSO_ECN;
        let (v4, ip_base, pseudo, ip_id0) = if kind == GSO_TCPV4 {
            if total < 40 || ip_len != 20 || pkt[0] != 0x45 {
                return None;
            }
            let tos = pkt[1] as u64;
            let frag = be16(pkt, 6) as u64;
            let ttl = pkt[8] as u64;
            let addrs = sum_words(&pkt[12..20]);
            let base = (0x4500 | tos) + frag + (ttl << 8) + PROTO_TCP as u64 + addrs;
            (true, base, addrs + PROTO_TCP as u64, be16(pkt, 4))
        } else if kind == GSO_TCPV6 {
            if total < 60 || ip_len != 40 || pkt[6] != PROTO_TCP {
                return None;
            }
            (false, 0, sum_words(&pkt[8..40]) + PROTO_TCP as u64, 0)
        } else {
            return None;
        };
        let doff = pkt[ip_len + 12];
        let thl = (doff >> 4) as usize * 4;
        let hl = ip_len + thl;
        if thl < 20 || hl >= total || gso_size == 0 {
            return None;
        }
        let gso = if hl + gso_size <= mtu {
            gso_size
        } else {
            8.max(mtu.saturating_sub(hl))
        };
        let flags = pkt[ip_len + 13];
        Some(Tso {
            v4,
            ip_len,
            hl,
            total,
            gso,
            seq0: u32::from_be_bytes(pkt[ip_len + 4..ip_len + 8].try_into().ok()?),
            flags,
            mid_flags: flags & !(TCP_FIN | TCP_PSH),
            ip_id0,
            ip_base,
            pseudo,
        })
    }

    pub fn segments(&self) -> usize {
        (self.total - self.hl).div_ceil(self.gso)
    }

    /// Write the TCP/IP header of the `count`-th segment (payload at `pkt[pos..pos + n]`)
    /// into `out[..hl]`, copying the unchanging fields from the super-packet's header.
    pub(crate) fn header(&self, pkt: &[u8], out: &mut [u8], count: usize, pos: usize, n: usize) {
        let hl = self.hl;
        let ip_len = self.ip_len;
        let last = pos + n >= self.total;
        let seg_total = hl + n;
        out[..hl].copy_from_slice(&pkt[..hl]);
        let mut fl = if last { self.flags } else { self.mid_flags };
        if count != 0 {
            fl &= !TCP_CWR;
        }
        let seq = self.seq0.wrapping_add((pos - hl) as u32);
        let tcp_csum = fold(self.pseudo + (seg_total - ip_len) as u64) as u16;
        if self.v4 {
            let ip_id = self.ip_id0.wrapping_add(count as u16);
            let ip_csum = !(fold(self.ip_base + seg_total as u64 + ip_id as u64) as u16);
            out[2..4].copy_from_slice(&(seg_total as u16).to_be_bytes());
            out[4..6].copy_from_slice(&ip_id.to_be_bytes());
            out[9] = PROTO_TCP;
            out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
        } else {
            out[4..6].copy_from_slice(&((seg_total - 40) as u16).to_be_bytes());
        }
        out[ip_len + 4..ip_len + 8].copy_from_slice(&seq.to_be_bytes());
        out[ip_len + 13] = fl;
        out[ip_len + 16..ip_len + 18].copy_from_slice(&tcp_csum.to_be_bytes());
    }
}

/// What one frame produced (offload.py `seal_tso`'s return, plus the first counter used).
#[derive(Debug, PartialEq, Eq)]
pub struct Sealed {
    pub off: usize,
    pub seg: usize,
    pub count: usize,
    pub inner_bytes: usize,
    pub first_counter: u64,
}

/// Where the cutting of one TSO frame stands, and the cutting itself: what `TsoSealer` and
/// plain.rs `PlainCutter` share (they differ only in the header before each segment and the
/// tag after it).
pub struct Cut {
    pub t: Tso,
    pos: usize,
    pub count: usize,
}

impl Cut {
    pub fn new(t: Tso) -> Cut {
        let pos = t.hl;
        Cut { t, pos, count: 0 }
    }

    /// Cut segments into `out` from `off`, each `head` bytes of header, the segment (its own
    /// TCP/IP header and payload) and `tail` bytes, until the frame is done or the batch is
    /// full: the next segment would overflow the GSO budget or the kernel's 64 segments per
    /// send (so the caller can send the batch with no borrow of `out` alive).
    /// `frame_one(header, segment and tail, segment length, index)` fills in the rest.
    pub fn fill(
        &mut self,
        frame: &[u8],
        out: &mut [u8],
        mut off: usize,
        (head, tail): (usize, usize),
        mut frame_one: impl FnMut(&mut [u8], &mut [u8], usize, usize),
    ) -> Batch {
        let t = &self.t;
        let pkt = &frame[VNET_LEN..];
        let (mut seg, mut batch) = (0usize, 0usize);
        while self.pos < t.total {
            let n = (t.total - self.pos).min(t.gso);
            let seg_total = t.hl + n;
            let size = head + seg_total + tail;
            let full = size > seg || off + size > GSO_BUDGET || batch >= MAX_GSO_SEGMENTS;
            // The second test is only reachable with a caller's `off` past the budget: send
            // what is there.
            if (batch != 0 && full) || off + size > out.len() {
                return Batch {
                    off,
                    seg,
                    done: false,
                };
            }
            let d = &mut out[off..off + size];
            let (hdr, body) = d.split_at_mut(head);
            t.header(pkt, body, self.count, self.pos, n);
            body[t.hl..seg_total].copy_from_slice(&pkt[self.pos..self.pos + n]);
            frame_one(hdr, body, seg_total, self.count);
            if seg == 0 {
                seg = size;
            }
            off += size;
            self.count += 1;
            batch += 1;
            self.pos += n;
        }
        Batch {
            off,
            seg,
            done: true,
        }
    }
}

/// Cutting one TSO frame into sealed segments, one GSO batch at a time (`Cut::fill`).
pub struct TsoSealer {
    cut: Cut,
    pub first_counter: u64,
}

/// One batch `fill` left in `out`.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub off: usize,
    pub seg: usize,
    pub done: bool,
}

impl TsoSealer {
    /// None: not a frame we cut (or the keypair's counters are exhausted); the caller uses
    /// the generic path. Takes the frame's counters, consecutive, in one atomic step.
    pub fn new(kp: &Keypair, frame: &[u8], mtu: usize) -> Option<TsoSealer> {
        let t = Tso::parse(frame, mtu)?;
        // The output buffer (GSO_BUDGET + 2048 in the data path) must hold one segment more
        // than the budget; larger segments take the generic path.
        if DATA_HEADER_LEN + t.hl + t.gso.min(t.total - t.hl) + TAG_LEN > 2048 {
            return None;
        }
        let first_counter = kp.take(t.segments() as u64)?;
        Some(TsoSealer {
            cut: Cut::new(t),
            first_counter,
        })
    }

    pub fn count(&self) -> usize {
        self.cut.count
    }

    pub fn inner_bytes(&self) -> usize {
        let t = &self.cut.t;
        t.total - t.hl + self.cut.count * t.hl
    }

    /// Seal segments into `out` from `off` until the frame is done or the batch is full.
    pub fn fill(&mut self, kp: &Keypair, frame: &[u8], out: &mut [u8], off: usize) -> Batch {
        let first = self.first_counter;
        let room = (DATA_HEADER_LEN, TAG_LEN);
        self.cut
            .fill(frame, out, off, room, |hdr, body, seg_total, count| {
                let counter = first + count as u64;
                let cont = if count != 0 { F_CONTINUATION } else { 0 };
                write_sealed(
                    hdr,
                    seg_total,
                    kp.device_id,
                    F_CSUM_PARTIAL | cont,
                    kp.remote_index,
                    counter,
                );
                kp.send.seal(counter, hdr, body);
            })
    }
}

/// The whole frame with a Rust `flush` (tests, fuzzing): offload.py `seal_tso`'s contract.
pub fn seal_tso(
    kp: &Keypair,
    frame: &[u8],
    out: &mut [u8],
    mut off: usize,
    mtu: usize,
    flush: &mut dyn FnMut(&[u8], usize, usize) -> usize,
) -> Option<Sealed> {
    let mut s = TsoSealer::new(kp, frame, mtu)?;
    loop {
        let b = s.fill(kp, frame, out, off);
        if b.done {
            return Some(Sealed {
                off: b.off,
                seg: b.seg,
                count: s.count(),
                inner_bytes: s.inner_bytes(),
                first_counter: s.first_counter,
            });
        }
        off = flush(out, b.off, b.seg);
    }
}

/// Seal one packet at `out[..]` (core/session.py `Keypair.seal_into` with the counter given).
pub fn seal_one(
    kp: &Keypair,
    out: &mut [u8],
    inner: &[u8],
    vt: u8,
    flags: u16,
    counter: u64,
) -> usize {
    let n = inner.len();
    let size = DATA_HEADER_LEN + n + TAG_LEN;
    let d = &mut out[..size];
    let (hdr, body) = d.split_at_mut(DATA_HEADER_LEN);
    write_sealed(hdr, n, kp.device_id, flags, kp.remote_index, counter);
    hdr[0] = vt;
    if vt != crate::header::VT_DATA {
        // the checksum covers the type: recompute it over the finished header
        hdr[10] = 0;
        hdr[11] = 0;
        let c = !(fold(crate::header::word_sum(hdr)) as u16);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
    }
    body[..n].copy_from_slice(inner);
    kp.send.seal(counter, hdr, body);
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v6_with_options() {
        let mut f = vec![1u8, 4, 0, 0, 94, 0, 40, 0, 16, 0];
        let mut ip = vec![0x60, 0, 0, 1, 0, 171, 6, 64];
        ip.extend_from_slice(&[0x11; 32]);
        let mut tcp = vec![
            0x9c, 0x40, 0x14, 0x51, 9, 0x15, 0xcc, 0x5a, 0, 0, 0, 0x63, 0x80, 0x18, 1, 0xf6, 0, 0,
            0, 7,
        ];
        tcp.extend_from_slice(&[0; 12]);
        tcp.extend_from_slice(&[0; 139]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&tcp);
        let t = Tso::parse(&f, 1408).expect("parses");
        assert_eq!((t.hl, t.gso, t.segments()), (72, 94, 2));
        let kp = Keypair::new("aes-256-gcm", &[1; 32], &[2; 32], 1, 2).unwrap();
        let mut out = vec![0u8; GSO_BUDGET + 2048];
        let s = seal_tso(&kp, &f, &mut out, 0, 1408, &mut |_, _, _| 0).expect("seals");
        assert_eq!(s.count, 2);
    }
}
