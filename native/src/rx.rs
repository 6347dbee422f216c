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

/// What RFC 6040 decapsulation (normal mode, section 4.2) did to one inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decap {
    /// Delivered as it came, or with ECT(0) made ECT(1) under an outer ECT(1) (not a mark).
    Keep,
    /// An ECN-capable packet under an outer CE: now CE (counted in the sink's `marks`).
    Marked,
    /// A Not-ECT packet under an outer CE: dropped (counted `ecn_not_ect_ce`).
    Drop,
}

/// The inner packet's new ECN field for the outer one, `None` to drop it, following the
/// RFC 6040 table as core/ecn.py does (Not-ECT 0, ECT(1) 1, ECT(0) 2, CE 3).
fn decap_field(outer: u8, inner: u8) -> Option<u8> {
    match (outer & 3, inner & 3) {
        (3, 0) => None,
        (3, _) => Some(3),
        (1, 2) => Some(1),
        (_, i) => Some(i),
    }
}

/// The ECN field of an IPv4 or IPv6 packet, `None` for anything else.
fn ecn_of(pkt: &[u8]) -> Option<u8> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => Some(pkt[1] & 3),
        Some(6) if pkt.len() >= 40 => Some((pkt[1] >> 4) & 3),
        _ => None,
    }
}

/// Apply RFC 6040 decapsulation to one inner packet in place (the IPv4 header checksum
/// updated incrementally, RFC 1624; IPv6 has none) and count what it did.
pub fn decap_ecn(pkt: &mut [u8], outer_ecn: u8, sink: &mut Coalescer) -> Decap {
    if outer_ecn & 1 == 0 {
        return Decap::Keep; // outer Not-ECT or ECT(0): the inner packet never changes
    }
    let Some(old) = ecn_of(pkt) else {
        return Decap::Keep; // not IP: the coalescer or the kernel decides (malformed_inner)
    };
    let Some(new) = decap_field(outer_ecn, old) else {
        sink.count(Reason::EcnNotEctCe);
        return Decap::Drop;
    };
    if new == old {
        return Decap::Keep;
    }
    if pkt[0] >> 4 == 4 {
        let before = pkt[1];
        pkt[1] = (before & !3) | new;
        // RFC 1624: HC' = ~(~HC + ~m + m') over the word holding the TOS byte.
        let m = u16::from_be_bytes([pkt[0], before]) as u32;
        let m2 = u16::from_be_bytes([pkt[0], pkt[1]]) as u32;
        let hc = u16::from_be_bytes([pkt[10], pkt[11]]) as u32;
        let mut s = (!hc & 0xFFFF) + (!m & 0xFFFF) + m2;
        s = (s & 0xFFFF) + (s >> 16);
        s = (s & 0xFFFF) + (s >> 16);
        pkt[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
    } else {
        pkt[1] = (pkt[1] & !0x30) | (new << 4);
    }
    if new == 3 {
        sink.mark();
        Decap::Marked
    } else {
        Decap::Keep
    }
}

/// A CONTINUATION segment joins its run with its header discarded, so it is never rewritten;
/// but it crossed the same congested hop as the run's head, so it counts as a mark where the
/// head would (per segment, as the Python path counts a merged run).
fn count_continuation_mark(pkt: &[u8], outer_ecn: u8, sink: &mut Coalescer) {
    if outer_ecn & 3 == 3 && matches!(ecn_of(pkt), Some(1 | 2)) {
        sink.mark();
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

impl Run<'_> {
    fn dest(&self) -> Dest<'_> {
        Dest {
            filter: self.filter,
            owner: self.owner,
            outer_ecn: self.outer_ecn,
        }
    }
}

/// Where an opened (or, in `plain` mode, checked) inner packet goes: one peer's source
/// filter, its run in the coalescer, the batch's outer ECN field.
#[derive(Clone, Copy)]
pub struct Dest<'a> {
    pub filter: &'a SourceFilter,
    pub owner: usize,
    pub outer_ecn: u8,
}

impl Dest<'_> {
    /// Continue the open run, or check the source and ECN and add the packet to the
    /// coalescer; `ctr` is (this packet's counter, the one a continuation of it must carry).
    /// Returns the verdict code (0 delivered, 1 + Reason).
    pub fn take(
        &self,
        sink: &mut Coalescer,
        out: &mut dyn Out,
        inner: &mut [u8],
        flags: u16,
        ctr: (u64, u64),
        cont_next: &mut u64,
    ) -> u8 {
        // A flagged continuation of the segment just opened joins its run with no header
        // checks (its header is discarded), if the run is this peer's.
        if flags & F_CONTINUATION != 0
            && ctr.0 == *cont_next
            && sink.vnet
            && sink.continue_run(out, inner, self.owner)
        {
            count_continuation_mark(inner, self.outer_ecn, sink);
            *cont_next = ctr.1;
            return 0;
        }
        if !self.filter.allows(inner) {
            sink.count(Reason::BadSource);
            1 + Reason::BadSource as u8
        } else if decap_ecn(inner, self.outer_ecn, sink) == Decap::Drop {
            1 + Reason::EcnNotEctCe as u8
        } else {
            // Only a packet that went on to the run may be continued.
            *cont_next = ctr.1;
            sink.add(out, inner, flags & F_CSUM_PARTIAL != 0, self.owner);
            0
        }
    }
}

/// What `rx_run` and plain.rs `rx_plain_run` share while they walk a batch: its segment
/// size, the verdict slots (when asked for) and the running counts.
pub struct Walk<'v> {
    pub seg: usize,
    verdicts: Option<&'v mut [u8]>,
    pub packets: u64,
    pub bytes: u64,
}

impl<'v> Walk<'v> {
    /// For a batch of `n` bytes of datagrams of `seg` (0 or too large: one datagram).
    pub fn new(n: usize, seg: usize, verdicts: Option<&'v mut [u8]>) -> Walk<'v> {
        let seg = if seg == 0 || seg > n { n.max(1) } else { seg };
        Walk {
            seg,
            verdicts,
            packets: 0,
            bytes: 0,
        }
    }

    /// Record the verdict of the datagram at `off`.
    pub fn verdict(&mut self, off: usize, v: u8) {
        let seg = self.seg;
        if let Some(slot) = self
            .verdicts
            .as_deref_mut()
            .and_then(|vs| vs.get_mut(off / seg))
        {
            *slot = v;
        }
    }

    pub fn result(&self, pos: usize, status: Status, index: u32, cont_next: u64) -> RxResult {
        RxResult {
            pos,
            status,
            index,
            cont_next,
            packets: self.packets,
            bytes: self.bytes,
        }
    }

    /// A datagram at `off` that is not canonical DATA: a runt (shorter than any header) is a
    /// counted `bad_header` (None: go on), anything else goes to Python.
    pub fn unparsed(
        &mut self,
        off: usize,
        ln: usize,
        sink: &mut Coalescer,
        cont_next: u64,
    ) -> Option<RxResult> {
        if ln < FIXED_HEADER_LEN {
            sink.count(Reason::BadHeader);
            self.verdict(off, 1 + Reason::BadHeader as u8);
            return None;
        }
        self.verdict(off, V_LEFT);
        Some(self.result(off, Status::Slow, 0, cont_next))
    }
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
    verdicts: Option<&mut [u8]>,
) -> RxResult {
    let n = buf.len();
    let mut w = Walk::new(n, seg, verdicts);
    let seg = w.seg;
    let mut off = start;
    while off < n {
        let ln = seg.min(n - off);
        let d = &mut buf[off..off + ln];
        let Some(h) = parse_sealed(d) else {
            if let Some(r) = w.unparsed(off, ln, sink, cont_next) {
                return r;
            }
            off += seg;
            continue;
        };
        let kp = match run.kp {
            Some(kp) if h.index == run.index => kp,
            _ => {
                w.verdict(off, V_LEFT);
                return w.result(off, Status::Lookup, h.index, cont_next);
            }
        };
        let (hdr, body) = d.split_at_mut(DATA_HEADER_LEN);
        match kp.open(hdr, h.counter, body) {
            Opened::Ok => {}
            Opened::BadTag => {
                sink.count(Reason::BadTag);
                w.verdict(off, 1 + Reason::BadTag as u8);
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
                w.verdict(off, 1 + r as u8);
                off += seg;
                continue;
            }
        }
        let inner = &mut body[..h.inner_len];
        w.packets += 1;
        w.bytes += h.inner_len as u64;
        let here = off;
        off += seg;
        let v = run.dest().take(
            sink,
            out,
            inner,
            h.flags,
            (h.counter, h.counter + 1),
            &mut cont_next,
        );
        w.verdict(here, v);
        if run.stop_after_open {
            return w.result(off, Status::Opened, h.index, cont_next);
        }
    }
    w.result(n.max(start), Status::End, 0, cont_next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalesce::REASONS;
    use crate::header::MIN_SEALED;
    use crate::tx::seal_one;

    fn udp4(tos: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, tos, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 1, 0, 9,
        ];
        let c = !(crate::header::fold(crate::header::word_sum(&p)) as u16);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    fn batch(kp: &Keypair, inners: &[(Vec<u8>, u64)]) -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        let seg = MIN_SEALED + inners[0].0.len();
        for (p, c) in inners {
            let mut d = vec![0u8; MIN_SEALED + p.len()];
            seal_one(kp, &mut d, p, 0x11, 0, *c);
            buf.extend_from_slice(&d);
        }
        (buf, seg)
    }

    fn counts(c: &Coalescer) -> Vec<(&'static str, u64)> {
        REASONS
            .iter()
            .zip(c.counts)
            .filter(|(_, n)| *n != 0)
            .map(|(r, n)| (*r, n))
            .collect()
    }

    #[test]
    fn decapsulation_follows_the_rfc_6040_table() {
        // Rows: outer Not-ECT, ECT(1), ECT(0), CE; columns: inner Not-ECT, ECT(1), ECT(0), CE
        // (RFC 6040 figure 4, normal mode; None: drop).
        let table = [
            [Some(0), Some(1), Some(2), Some(3)],
            [Some(0), Some(1), Some(1), Some(3)],
            [Some(0), Some(1), Some(2), Some(3)],
            [None, Some(3), Some(3), Some(3)],
        ];
        for outer in 0..4u8 {
            for inner in 0..4u8 {
                assert_eq!(
                    super::decap_field(outer, inner),
                    table[outer as usize][inner as usize]
                );
                let mut pkt = udp4(0x28 << 2 | inner); // a DSCP that must survive
                let mut sink = Coalescer::new(false);
                let d = super::decap_ecn(&mut pkt, outer, &mut sink);
                match table[outer as usize][inner as usize] {
                    None => assert_eq!(d, super::Decap::Drop),
                    Some(want) => {
                        assert_eq!(pkt[1], 0x28 << 2 | want, "outer {outer} inner {inner}");
                        assert_eq!(crate::header::word_sum(&pkt[..20]), 0, "IPv4 checksum");
                        let marked = want == 3 && inner != 3;
                        assert_eq!(d == super::Decap::Marked, marked);
                    }
                }
            }
        }
    }

    #[test]
    fn opens_counts_replays_and_forgeries_and_decapsulates_ce() {
        let kp = Keypair::new("chacha20-poly1305", &[3; 32], &[3; 32], 1, 9).unwrap();
        let filter = SourceFilter {
            v4: vec![(10, 8, true)],
            v6: vec![],
        };
        let (mut buf, seg) = batch(
            &kp,
            &[(udp4(2), 0), (udp4(0), 1), (udp4(1), 0), (udp4(1), 2)],
        );
        buf[2 * seg - 1] ^= 1; // a forgery
        let run = Run {
            kp: Some(&kp),
            index: 9,
            filter: &filter,
            owner: 1,
            outer_ecn: 3,
            stop_after_open: false,
        };
        let mut sink = Coalescer::new(false);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let r = rx_run(&run, &mut buf, 0, seg, &mut sink, &mut out, NO_CONT, None);
        assert_eq!((r.status, r.pos, r.packets), (Status::End, buf.len(), 2));
        assert_eq!(counts(&sink), vec![("bad_tag", 1), ("replay", 1)]);
        assert_eq!(sink.marks, 2);
        assert_eq!(out.len(), 2);
        for p in &out {
            assert_eq!(p[1] & 3, 3);
            assert_eq!(crate::header::word_sum(&p[..20]), 0, "IPv4 header checksum");
        }
    }

    #[test]
    fn hands_back_what_python_must_handle() {
        let kp = Keypair::new("aes-256-gcm", &[3; 32], &[3; 32], 1, 9).unwrap();
        let filter = SourceFilter::default();
        let (mut buf, seg) = batch(&kp, &[(udp4(0), 0)]);
        let run = Run {
            kp: None,
            index: 0,
            filter: &filter,
            owner: 1,
            outer_ecn: 0,
            stop_after_open: false,
        };
        let mut sink = Coalescer::new(true);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let r = rx_run(&run, &mut buf, 0, seg, &mut sink, &mut out, NO_CONT, None);
        assert_eq!((r.status, r.index, r.pos), (Status::Lookup, 9, 0));
        let mut junk = vec![0x15u8; 40];
        let r = rx_run(&run, &mut junk, 0, 40, &mut sink, &mut out, NO_CONT, None);
        assert_eq!(r.status, Status::Slow);
        let mut runt = vec![0x11u8; 5];
        let r = rx_run(&run, &mut runt, 0, 5, &mut sink, &mut out, NO_CONT, None);
        assert_eq!(r.status, Status::End);
        assert_eq!(counts(&sink), vec![("bad_header", 1)]);
        // not this peer's source: bad_source, and nothing written
        let run = Run {
            kp: Some(&kp),
            index: 9,
            filter: &filter,
            owner: 1,
            outer_ecn: 0,
            stop_after_open: true,
        };
        let r = rx_run(&run, &mut buf, 0, seg, &mut sink, &mut out, NO_CONT, None);
        assert_eq!((r.status, r.packets), (Status::Opened, 1));
        assert!(out.is_empty());
    }
}
