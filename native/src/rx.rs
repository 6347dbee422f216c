//! Receive: one call per GRO run. Checks each datagram's sealed header, opens it, consults the
//! replay window, applies RFC 6040 decapsulation, checks the inner source address and feeds
//! the coalescer. The specification is the sealed branch of helper/datapath.py `run_rx`;
//! whatever that branch hands to the general route (not canonical sealed DATA, another
//! session, a packet that must confirm a session or moves the peer) stops this loop and goes
//! back to Python at that datagram.

use crate::coalesce::{Coalescer, Out, Reason};
use crate::header::{
    parse_sealed, DATA_HEADER_LEN, FIXED_HEADER_LEN, F_CONTINUATION, F_CSUM_PARTIAL,
};
use crate::keys::{Keypair, Opened};
use crate::replay::Verdict;

pub const NO_CONT: u64 = u64::MAX;

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Every datagram handled.
    End = 0,
    /// The datagram at `pos` is not canonical sealed DATA: the general route (Python).
    Slow = 1,
    /// The datagram at `pos` is canonical sealed DATA for session `index`: look it up.
    Lookup = 2,
    /// One packet opened (pos is after it); Python must move the peer / confirm the session.
    Opened = 3,
}

/// Verdict codes written per datagram (when asked): 0 delivered, 1 + Reason, 255 Python's.
pub const V_LEFT: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxResult {
    pub pos: usize,
    pub status: Status,
    pub index: u32,
    pub cont_next: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Which inner source addresses belong to one peer: its own prefixes (allow) and every other
/// peer's prefix inside them that is longer (deny); the longest match decides, which is the
/// same answer as the full longest-prefix table's "is the owner this peer".
#[derive(Default, Clone, Debug)]
pub struct SourceFilter {
    pub v4: Vec<(u32, u8, bool)>,
    pub v6: Vec<(u128, u8, bool)>,
}

impl SourceFilter {
    pub fn allows(&self, pkt: &[u8]) -> bool {
        let n = pkt.len();
        if n >= 20 && pkt[0] >> 4 == 4 {
            let a = u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]);
            best(self.v4.iter().map(|&(k, p, allow)| {
                let hit = p == 0 || (p <= 32 && a >> (32 - p as u32) == k);
                (hit, p, allow)
            }))
        } else if n >= 40 && pkt[0] >> 4 == 6 {
            let a = u128::from_be_bytes(pkt[8..24].try_into().expect("16 bytes"));
            best(self.v6.iter().map(|&(k, p, allow)| {
                let hit = p == 0 || (p <= 128 && a >> (128 - p as u32) == k);
                (hit, p, allow)
            }))
        } else {
            false
        }
    }
}

fn best(it: impl Iterator<Item = (bool, u8, bool)>) -> bool {
    let mut found: Option<(u8, bool)> = None;
    for (hit, p, allow) in it {
        if hit && found.is_none_or(|(bp, _)| p > bp) {
            found = Some((p, allow));
        }
    }
    found.is_some_and(|(_, a)| a)
}

/// RFC 6040 decapsulation for an outer CE: an ECT inner packet becomes CE (the IPv4 header
/// checksum updated), a Not-ECT one is dropped (false). Other outer codepoints change nothing.
pub fn decap_ecn(pkt: &mut [u8], outer_ecn: u8, sink: &mut Coalescer) -> bool {
    if outer_ecn & 3 != 3 || pkt.is_empty() {
        return true;
    }
    let n = pkt.len();
    match pkt[0] >> 4 {
        4 if n >= 20 => {
            let old = pkt[1];
            match old & 3 {
                0 => {
                    sink.count(Reason::EcnNotEctCe);
                    false
                }
                3 => true,
                _ => {
                    pkt[1] = old | 3;
                    // RFC 1624: HC' = ~(~HC + ~m + m') over the word holding the TOS byte.
                    let m = u16::from_be_bytes([pkt[0], old]) as u32;
                    let m2 = u16::from_be_bytes([pkt[0], pkt[1]]) as u32;
                    let hc = u16::from_be_bytes([pkt[10], pkt[11]]) as u32;
                    let mut s = (!hc & 0xFFFF) + (!m & 0xFFFF) + m2;
                    s = (s & 0xFFFF) + (s >> 16);
                    s = (s & 0xFFFF) + (s >> 16);
                    pkt[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
                    sink.count(Reason::EcnCe);
                    true
                }
            }
        }
        6 if n >= 40 => match (pkt[1] >> 4) & 3 {
            0 => {
                sink.count(Reason::EcnNotEctCe);
                false
            }
            3 => true,
            _ => {
                pkt[1] |= 0x30;
                sink.count(Reason::EcnCe);
                true
            }
        },
        _ => true, // not IP: the coalescer or the kernel decides (malformed_inner)
    }
}

pub struct Run<'a> {
    pub kp: Option<&'a Keypair>,
    pub index: u32,
    pub filter: &'a SourceFilter,
    pub owner: usize,
    pub outer_ecn: u8,
    pub stop_after_open: bool,
}

/// Handle datagrams `buf[start..n]` (each `seg` bytes, the last possibly shorter) until one
/// must go back to Python. `verdicts[i]` (if given) gets datagram i's verdict (i counted
/// from the start of `buf`).
#[allow(clippy::too_many_arguments)]
pub fn rx_run(
    run: &Run,
    buf: &mut [u8],
    start: usize,
    seg: usize,
    sink: &mut Coalescer,
    out: &mut dyn Out,
    mut cont_next: u64,
    mut verdicts: Option<&mut [u8]>,
) -> RxResult {
    let n = buf.len();
    let seg = if seg == 0 || seg > n { n.max(1) } else { seg };
    let mut off = start;
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut verdict = |off: usize, v: u8| {
        if let Some(vs) = verdicts.as_deref_mut() {
            if let Some(slot) = vs.get_mut(off / seg) {
                *slot = v;
            }
        }
    };
    let result = |pos, status, index, cont_next, packets, bytes| RxResult {
        pos,
        status,
        index,
        cont_next,
        packets,
        bytes,
    };
    while off < n {
        let ln = seg.min(n - off);
        let d = &mut buf[off..off + ln];
        let Some(h) = parse_sealed(d) else {
            if ln < FIXED_HEADER_LEN {
                sink.count(Reason::BadHeader);
                verdict(off, 1 + Reason::BadHeader as u8);
                off += seg;
                continue;
            }
            verdict(off, V_LEFT);
            return result(off, Status::Slow, 0, cont_next, packets, bytes);
        };
        let kp = match run.kp {
            Some(kp) if h.index == run.index => kp,
            _ => {
                verdict(off, V_LEFT);
                return result(off, Status::Lookup, h.index, cont_next, packets, bytes);
            }
        };
        let (hdr, body) = d.split_at_mut(DATA_HEADER_LEN);
        match kp.open(hdr, h.counter, body) {
            Opened::Ok => {}
            Opened::BadTag => {
                sink.count(Reason::BadTag);
                verdict(off, 1 + Reason::BadTag as u8);
                off += seg;
                continue;
            }
            Opened::Replay(v) => {
                let r = if v == Verdict::Duplicate {
                    Reason::Replay
                } else {
                    Reason::TooOld
                };
                sink.count(r);
                verdict(off, 1 + r as u8);
                off += seg;
                continue;
            }
        }
        let inner = &mut body[..h.inner_len];
        packets += 1;
        bytes += h.inner_len as u64;
        let here = off;
        off += seg;
        let stop = run.stop_after_open;
        // A flagged continuation of the segment just opened joins its run with no header
        // checks (its header is discarded), if the run is this peer's.
        if h.flags & F_CONTINUATION != 0
            && h.counter == cont_next
            && sink.vnet
            && sink.continue_run(out, inner, run.owner)
        {
            cont_next = h.counter + 1;
            verdict(here, 0);
            if stop {
                return result(off, Status::Opened, h.index, cont_next, packets, bytes);
            }
            continue;
        }
        if !run.filter.allows(inner) {
            sink.count(Reason::BadSource);
            verdict(here, 1 + Reason::BadSource as u8);
        } else if !decap_ecn(inner, run.outer_ecn, sink) {
            verdict(here, 1 + Reason::EcnNotEctCe as u8);
        } else {
            // Only a packet that went on to the run may be continued.
            cont_next = h.counter + 1;
            sink.add(out, inner, h.flags & F_CSUM_PARTIAL != 0, run.owner);
            verdict(here, 0);
        }
        if stop {
            return result(off, Status::Opened, h.index, cont_next, packets, bytes);
        }
    }
    result(n.max(start), Status::End, 0, cont_next, packets, bytes)
}
