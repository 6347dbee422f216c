//! The receive function under libFuzzer: GRO batches mixing raw datagrams with genuinely
//! sealed ones (so the fuzzer gets past the tag to the replay window, the ECN rule, the
//! source filter and the coalescer), every outer ECN codepoint, any segment size. Driven the
//! way helper/datapath.py drives it: a datagram handed back to Python is skipped. With
//! `data[0] & 32` (sealed mode) the same datagrams go through the receive loop that stays
//! native across batches (`rx_loop`): cut into recvmmsg batches, from the peer's address or
//! another, each with its own outer ECN field; a hand-off is skipped as Python would take it.
//! `cargo +nightly fuzz run rx` in native/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunseal_native::coalesce::{Coalescer, Out};
use tunseal_native::header::{FIXED_HEADER_LEN, F_CONTINUATION, F_CSUM_PARTIAL, MIN_SEALED};
use tunseal_native::keys::Keypair;
use tunseal_native::plain::{rx_plain_run, write_plain, PlainRun};
use tunseal_native::mmsg::{RecvBatch, Source, RUN_BUDGET};
use tunseal_native::rx::{rx_run, Run, SourceFilter, Status, NO_CONT};
use tunseal_native::rxloop::{rx_loop, Given, Why};
use tunseal_native::tx::seal_one;

struct Frames(Vec<Vec<u8>>, bool);

impl Out for Frames {
    fn write(&mut self, frame: &[u8]) -> bool {
        // What the coalescer writes must be a frame the kernel can act on.
        if !self.1 {
            self.0.push(frame.to_vec());
            return true;
        }
        assert!(frame.len() >= 10);
        let gso_type = frame[1];
        let hdr_len = u16::from_le_bytes([frame[2], frame[3]]) as usize;
        let gso = u16::from_le_bytes([frame[4], frame[5]]) as usize;
        let start = u16::from_le_bytes([frame[6], frame[7]]) as usize;
        let off = u16::from_le_bytes([frame[8], frame[9]]) as usize;
        if frame[0] & 1 != 0 {
            assert!(start + off + 2 <= frame.len() - 10, "checksum outside the packet");
        }
        if gso_type != 0 {
            assert!(gso > 0 && hdr_len >= start + 20 && hdr_len < frame.len() - 10);
            assert!(frame.len() - 10 <= 65535);
        }
        self.0.push(frame.to_vec());
        true
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let kp = Keypair::new("aes-256-gcm", &[7; 32], &[7; 32], 3, 0x0102_0304).unwrap();
    let outer_ecn = data[0] & 3;
    let vnet = data[0] & 4 != 0;
    let plain = data[0] & 16 != 0; // `plain` mode: rx_plain_run, datagrams framed, not sealed
    let seg_hint = u16::from_be_bytes([data[1], data[2]]) as usize;
    let mut dgrams: Vec<Vec<u8>> = Vec::new();
    let mut counter = 0u64;
    let mut i = 3;
    while i + 2 <= data.len() && dgrams.len() < 64 {
        let kind = data[i];
        let len = (data[i + 1] as usize * 7).min(data.len() - i - 2);
        let body = &data[i + 2..i + 2 + len];
        i += 2 + len;
        if kind & 1 == 0 {
            dgrams.push(body.to_vec());
            continue;
        }
        let mut flags = 0;
        if kind & 2 != 0 {
            flags |= F_CSUM_PARTIAL;
        }
        if kind & 4 != 0 {
            flags |= F_CONTINUATION;
        }
        if kind & 8 != 0 {
            counter = counter.saturating_sub((kind >> 4) as u64); // a replay or reorder
        }
        if plain {
            let mut out = vec![0u8; FIXED_HEADER_LEN + body.len()];
            let dev = if kind & 0x80 != 0 { 9 } else { 3 }; // 9: another device (Lookup)
            write_plain(&mut out, body.len(), dev, counter as u16, flags);
            out[FIXED_HEADER_LEN..].copy_from_slice(body);
            counter += 1;
            dgrams.push(out);
            continue;
        }
        let mut out = vec![0u8; MIN_SEALED + body.len()];
        seal_one(&kp, &mut out, body, 0x11, flags, counter);
        counter += 1;
        dgrams.push(out);
    }
    if dgrams.is_empty() {
        return;
    }
    let seg = if seg_hint == 0 { dgrams[0].len().max(1) } else { seg_hint.min(4096) };
    let mut buf = Vec::new();
    let n = dgrams.len();
    for (k, d) in dgrams.iter().enumerate() {
        let mut d = d.clone();
        if k + 1 < n || d.len() > seg {
            d.resize(seg, 0);
        }
        buf.extend_from_slice(&d);
    }
    let filter = SourceFilter { v4: vec![(10, 8, true), (0x0A_0100, 24, false)], v6: vec![(0, 0, true)] };
    let mut sink = Coalescer::new(vnet);
    let mut frames = Frames(Vec::new(), vnet);
    let run = Run { kp: Some(&kp), index: 0x0102_0304, filter: &filter, owner: 1, outer_ecn, stop_after_open: data[0] & 8 != 0 };
    if data[0] & 32 != 0 && !plain {
        looped(&dgrams, data, &kp, &filter, &mut sink, &mut frames);
        sink.flush(&mut frames);
        return;
    }
    let mut verdicts = vec![0u8; buf.len() / seg.max(1) + 1];
    let mut pos = 0;
    let mut cont = NO_CONT;
    let mut calls = 0;
    while pos < buf.len() {
        calls += 1;
        assert!(calls <= 2 * n + 2, "no progress");
        let r = if plain {
            let prun = PlainRun { device_id: Some(3), filter: &filter, owner: 1, outer_ecn };
            rx_plain_run(&prun, &mut buf, pos, seg, &mut sink, &mut frames, cont, Some(&mut verdicts))
        } else {
            rx_run(&run, &mut buf, pos, seg, &mut sink, &mut frames, cont, Some(&mut verdicts))
        };
        cont = r.cont_next;
        match r.status {
            Status::End => break,
            Status::Opened => pos = r.pos,
            Status::Slow | Status::Lookup => pos = r.pos + seg,
        }
    }
    sink.flush(&mut frames);
});

/// The datagrams through `rx_loop`: batches of up to 8 (cut where the input says), each
/// datagram from the peer (or, by its input byte, a stranger) with an outer ECN field.
fn looped(
    dgrams: &[Vec<u8>],
    data: &[u8],
    kp: &Keypair,
    filter: &SourceFilter,
    sink: &mut Coalescer,
    frames: &mut Frames,
) {
    let src = |k: u8| {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, k]);
        Source { v6: false, addr, scope: 0 }
    };
    let peer = src(1);
    let mut batches = std::collections::VecDeque::new();
    let mut cur = Vec::new();
    for (k, d) in dgrams.iter().enumerate() {
        let b = data.get(3 + k).copied().unwrap_or(0);
        cur.push((d.clone(), b & 3, if b & 0x40 != 0 { src(2) } else { peer }));
        if b & 0x80 != 0 || cur.len() == 8 {
            batches.push_back(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        batches.push_back(cur);
    }
    let mut given = Given(batches);
    let mut batch = RecvBatch::new(true);
    let mut run = Run { kp: Some(kp), index: 0x0102_0304, filter, owner: 1, outer_ecn: 0, stop_after_open: false };
    let mut buf = vec![0u8; RUN_BUDGET];
    for _ in 0..=2 * dgrams.len() + 2 {
        let r = rx_loop(&mut given, &mut batch, &mut run, &peer, &mut buf, sink, frames, f64::MAX);
        match r.why {
            Why::Handoff => {
                let t = r.taken.expect("a hand-off carries its run");
                assert!(t.n <= RUN_BUDGET && r.pos < t.n.max(1), "hand-off inside its run");
            }
            Why::Idle => return,
            w => panic!("unexpected {w:?} from given batches"),
        }
    }
    panic!("no progress");
}
