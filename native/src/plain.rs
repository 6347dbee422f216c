//! `plain` mode (no cryptography): the 12-byte fixed header (docs/PROTOCOL.md, core/session.py
//! `seal_plain_into`: ver/type, HLEN 3 words, OLDPACKETLEN, DeviceID, EncapID, Flags,
//! Checksum) and the inner packet in the clear. The specification is helper/offload.py
//! `frame_tso_plain` (transmit) and the plain branch of helper/datapath.py `run_rx` (receive):
//! the same wire bytes, the same runs, the same drops.

use crate::coalesce::{Coalescer, Out};
use crate::header::{fold, word_sum, FIXED_HEADER_LEN, F_CONTINUATION, F_CSUM_PARTIAL, VT_DATA};
use crate::rx::{Dest, RxResult, SourceFilter, Status, Walk, V_LEFT};
use crate::tx::{Batch, Cut, Tso};

/// HLEN of the fixed header alone, in 4-byte words.
pub const PLAIN_HLEN_WORDS: u8 = (FIXED_HEADER_LEN / 4) as u8;
/// The only flags a plain DATA packet may carry (core/session.py `_PLAIN_ALLOWED`).
pub const PLAIN_ALLOWED: u16 = F_CSUM_PARTIAL | F_CONTINUATION;

/// A canonical plain DATA header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plain {
    pub inner_len: usize,
    pub device_id: u16,
    pub encap: u16,
    pub flags: u16,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The datagram `d` if it is canonical plain DATA whose header checks out (the inline test
/// in helper/datapath.py `run_rx`); None: it takes the general route.
pub fn parse_plain(d: &[u8]) -> Option<Plain> {
    if d.len() < FIXED_HEADER_LEN || d[0] != VT_DATA || d[1] != PLAIN_HLEN_WORDS {
        return None;
    }
    let inner_len = be16(d, 2) as usize;
    let flags = be16(d, 8);
    if d.len() != inner_len + FIXED_HEADER_LEN
        || flags & !PLAIN_ALLOWED != 0
        || word_sum(&d[..FIXED_HEADER_LEN]) != 0
    {
        return None;
    }
    Some(Plain {
        inner_len,
        device_id: be16(d, 4),
        encap: be16(d, 6),
        flags,
    })
}

/// Write the plain DATA header for an `inner_len`-byte packet at `out[..12]`.
pub fn write_plain(out: &mut [u8], inner_len: usize, device_id: u16, encap: u16, flags: u16) {
    let s = ((VT_DATA as u64) << 8)
        + PLAIN_HLEN_WORDS as u64
        + inner_len as u64
        + device_id as u64
        + encap as u64
        + flags as u64;
    let csum = !(fold(s) as u16);
    out[0] = VT_DATA;
    out[1] = PLAIN_HLEN_WORDS;
    out[2..4].copy_from_slice(&(inner_len as u16).to_be_bytes());
    out[4..6].copy_from_slice(&device_id.to_be_bytes());
    out[6..8].copy_from_slice(&encap.to_be_bytes());
    out[8..10].copy_from_slice(&flags.to_be_bytes());
    out[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// Cutting one TSO frame into plain segments, one GSO batch at a time (tx.rs `TsoSealer`
/// without the AEAD; the EncapID runs on from `encap`, wrapping at 16 bits).
pub struct PlainCutter {
    cut: Cut,
    device_id: u16,
    pub encap: u16,
}

impl PlainCutter {
    /// None: not a frame we cut (the caller uses the generic path).
    pub fn new(frame: &[u8], mtu: usize, device_id: u16, encap: u16) -> Option<PlainCutter> {
        let t = Tso::parse(frame, mtu)?;
        // One segment must fit the slot the output buffer keeps beyond the budget (2048).
        if FIXED_HEADER_LEN + t.hl + t.gso.min(t.total - t.hl) > 2048 {
            return None;
        }
        Some(PlainCutter {
            cut: Cut::new(t),
            device_id,
            encap,
        })
    }

    pub fn count(&self) -> usize {
        self.cut.count
    }

    pub fn inner_bytes(&self) -> usize {
        let t = &self.cut.t;
        t.total - t.hl + self.cut.count * t.hl
    }

    /// Frame segments into `out` from `off` until the frame is done or the batch is full.
    pub fn fill(&mut self, frame: &[u8], out: &mut [u8], off: usize) -> Batch {
        let (device_id, encap) = (self.device_id, &mut self.encap);
        let room = (FIXED_HEADER_LEN, 0);
        self.cut
            .fill(frame, out, off, room, |hdr, _body, seg_total, count| {
                let cont = if count != 0 { F_CONTINUATION } else { 0 };
                write_plain(hdr, seg_total, device_id, *encap, F_CSUM_PARTIAL | cont);
                *encap = encap.wrapping_add(1);
            })
    }
}

/// One peer's stretch of a receive batch in `plain` mode.
pub struct PlainRun<'a> {
    /// The DeviceID Python looked up (None: none yet, every packet is a lookup).
    pub device_id: Option<u16>,
    pub filter: &'a SourceFilter,
    pub owner: usize,
    pub outer_ecn: u8,
}

/// Handle plain datagrams `buf[start..n]` (each `seg` bytes, the last possibly shorter)
/// until one must go back to Python: not canonical plain DATA (`Slow`), or another DeviceID
/// (`Lookup`, `index` = the DeviceID). `cont_next` is the EncapID a CONTINUATION must carry.
#[allow(clippy::too_many_arguments)]
pub fn rx_plain_run(
    run: &PlainRun,
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
    let dest = Dest {
        filter: run.filter,
        owner: run.owner,
        outer_ecn: run.outer_ecn,
    };
    let mut off = start;
    while off < n {
        let ln = seg.min(n - off);
        let d = &mut buf[off..off + ln];
        let Some(h) = parse_plain(d) else {
            if let Some(r) = w.unparsed(off, ln, sink, cont_next) {
                return r;
            }
            off += seg;
            continue;
        };
        if run.device_id != Some(h.device_id) {
            w.verdict(off, V_LEFT);
            return w.result(off, Status::Lookup, h.device_id as u32, cont_next);
        }
        let inner = &mut d[FIXED_HEADER_LEN..];
        w.packets += 1;
        w.bytes += h.inner_len as u64;
        let ctr = (h.encap as u64, h.encap.wrapping_add(1) as u64);
        let v = dest.take(sink, out, inner, h.flags, ctr, &mut cont_next);
        w.verdict(off, v);
        off += seg;
    }
    w.result(n.max(start), Status::End, 0, cont_next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalesce::Reason;
    use crate::rx::NO_CONT;

    #[test]
    fn written_header_parses_and_every_damage_is_caught() {
        let mut d = vec![0u8; FIXED_HEADER_LEN + 5];
        write_plain(&mut d, 5, 0xBEEF, 0xFFFF, F_CSUM_PARTIAL | F_CONTINUATION);
        let p = parse_plain(&d).expect("parses");
        assert_eq!((p.inner_len, p.device_id, p.encap), (5, 0xBEEF, 0xFFFF));
        assert_eq!(word_sum(&d[..FIXED_HEADER_LEN]), 0);
        for i in 0..FIXED_HEADER_LEN {
            let mut e = d.clone();
            e[i] ^= 0x40;
            assert!(parse_plain(&e).is_none(), "byte {i}");
        }
        assert!(parse_plain(&d[..FIXED_HEADER_LEN + 4]).is_none(), "cut");
    }

    #[test]
    fn hands_other_devices_and_non_data_back_and_counts_bad_sources() {
        let filter = SourceFilter {
            v4: vec![(10, 8, true)],
            v6: vec![],
        };
        let mut pkt = vec![0x45u8, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 1];
        pkt.extend_from_slice(&[10, 1, 0, 9, 0, 0, 0, 0, 0, 8, 0, 0]);
        let mut buf = Vec::new();
        for (dev, src) in [(7u16, 10u8), (7, 11), (8, 10)] {
            let mut d = vec![0u8; FIXED_HEADER_LEN + pkt.len()];
            pkt[12] = src;
            write_plain(&mut d, pkt.len(), dev, 1, 0);
            d[FIXED_HEADER_LEN..].copy_from_slice(&pkt);
            buf.extend_from_slice(&d);
        }
        let seg = FIXED_HEADER_LEN + pkt.len();
        let run = PlainRun {
            device_id: Some(7),
            filter: &filter,
            owner: 1,
            outer_ecn: 0,
        };
        let mut sink = Coalescer::new(false);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut v = [9u8; 3];
        let r = rx_plain_run(
            &run,
            &mut buf,
            0,
            seg,
            &mut sink,
            &mut out,
            NO_CONT,
            Some(&mut v),
        );
        assert_eq!(
            (r.status, r.index, r.pos, r.packets),
            (Status::Lookup, 8, 2 * seg, 2)
        );
        assert_eq!(v, [0, 1 + Reason::BadSource as u8, V_LEFT]);
        assert_eq!(out.len(), 1);
        buf[2 * seg] = 0x15; // not DATA: the general route
        let r = rx_plain_run(
            &run,
            &mut buf,
            2 * seg,
            seg,
            &mut sink,
            &mut out,
            NO_CONT,
            None,
        );
        assert_eq!((r.status, r.pos), (Status::Slow, 2 * seg));
    }
}
