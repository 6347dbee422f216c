//! Transmit of single packets (pings, UDP, small TCP: whatever is not a TSO frame) for the
//! one peer of a client tunnel: read what the TUN device has ready and seal (or, in `plain`
//! mode, frame) each packet into the GSO output buffer, in one call. The specification is
//! helper/datapath.py `_TxBatch.emit` with helper/offload.py `segment` for a frame that is
//! not a GSO one; anything else that call would do differently (a TSO frame, a packet larger
//! than the MTU, one that does not fit the batch) is handed back to Python as read.

use crate::header::{FIXED_HEADER_LEN, F_CSUM_PARTIAL, MIN_SEALED, VT_DATA};
use crate::keys::Keypair;
use crate::plain::write_plain;
use crate::tx::{seal_one, GSO_BUDGET, MAX_GSO_SEGMENTS, VNET_LEN};

/// helper/icmp.py QUOTE_LEN: the start of each packet kept for relaying outer ICMP errors.
pub const QUOTE_LEN: usize = 68;
/// One quote slot: EncapID (2 bytes, big-endian), length (1), the packet's first bytes.
pub const QUOTE_SLOT: usize = 3 + QUOTE_LEN;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_ECN: u8 = 0x80;

/// How packets are put on the wire: sealed with a keypair, or `plain` (EncapID runs on).
pub enum Framer<'a> {
    Sealed(&'a Keypair),
    Plain { device_id: u16, encap: u16 },
}

/// The batch being built in the output buffer (`_TxBatch`'s off, seg, count, ecn).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub off: usize,
    pub seg: usize,
    pub count: usize,
    pub ecn: u8,
}

/// Why a drain stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// The device has nothing more to read (EAGAIN): send the batch and wait.
    Empty,
    /// Send the batch now (it is full, ends with a shorter packet, or `fresh` asked for the
    /// first packet to leave at once), then drain again.
    Send,
    /// A frame of this many bytes is in the read buffer for Python's general path.
    Frame(usize),
    /// The read failed with this errno.
    Error(i32),
}

/// What a drain did: why it stopped, the packets sealed and their inner bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub why: Drain,
    pub packets: usize,
    pub bytes: usize,
}

/// Where frames are read from: the TUN fd in the module, a list in tests.
pub trait Source {
    /// Ok(n) bytes read into `buf`, or Err(errno).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, i32>;
}

/// A file descriptor (the TUN device, non-blocking).
pub struct ReadFd(pub i32);

impl Source for ReadFd {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, i32> {
        loop {
            // SAFETY: buf is a valid, writable slice for its length; read(2) writes at most
            // that many bytes into it.
            let r = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }
}

/// helper/datapath.py `_link_local` (the same tests, byte for byte).
fn link_local(p: &[u8]) -> bool {
    if p.len() >= 40 && p[0] >> 4 == 6 {
        let link_src = p[8] == 0xFE && p[9] & 0xC0 == 0x80;
        return link_src || (p[24] == 0xFF && p[25] & 0x0F <= 2);
    }
    p.len() >= 20 && p[16] == 224 && p[17] == 0 && p[18] == 0
}

/// core/ecn.py `of_packet`.
fn ecn_of(p: &[u8]) -> u8 {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 2 => p[1] & 3,
        Some(6) if p.len() >= 2 => (p[1] >> 4) & 3,
        _ => 0,
    }
}

/// Read and seal single packets into `out` (appending to `b`) until the device is empty,
/// the batch must be sent, or a frame needs Python. `quotes` gets one `QUOTE_SLOT` per
/// packet sealed (indexed from the batch's start: Python records them in the ICMP ring).
#[allow(clippy::too_many_arguments)]
pub fn drain(
    framer: &mut Framer,
    src: &mut dyn Source,
    vnet: bool,
    buf: &mut [u8],
    out: &mut [u8],
    b: &mut Batch,
    mtu: usize,
    fresh: bool,
    quotes: &mut [u8],
) -> Drained {
    let (mut packets, mut bytes) = (0usize, 0usize);
    let done = |why, packets, bytes| Drained {
        why,
        packets,
        bytes,
    };
    loop {
        let n = match src.read(buf) {
            Ok(n) => n,
            Err(e) if e == libc::EAGAIN => return done(Drain::Empty, packets, bytes),
            Err(e) => return done(Drain::Error(e), packets, bytes),
        };
        let (pkt, partial) = if vnet {
            // offload.py `segment`: a GSO frame (TSO) and a runt are Python's.
            if n < VNET_LEN || (buf[1] & !GSO_ECN != GSO_NONE && n >= VNET_LEN + 40) {
                return done(Drain::Frame(n), packets, bytes);
            }
            (&buf[VNET_LEN..n], buf[0] & F_NEEDS_CSUM != 0)
        } else {
            (&buf[..n], false)
        };
        if link_local(pkt) {
            continue; // neighbour discovery, MLD, mDNS...: meaningless beyond this link
        }
        let len = pkt.len();
        let need = match framer {
            Framer::Sealed(_) => MIN_SEALED + len,
            Framer::Plain { .. } => FIXED_HEADER_LEN + len,
        };
        let ecn = ecn_of(pkt);
        let fits = b.count == 0 || (need <= b.seg && b.off + need <= GSO_BUDGET && ecn == b.ecn);
        let quote_at = b.count * QUOTE_SLOT;
        if len > mtu || !fits || b.off + need > out.len() || quote_at + QUOTE_SLOT > quotes.len() {
            return done(Drain::Frame(n), packets, bytes); // too big, or the batch must go first
        }
        let flags = if partial { F_CSUM_PARTIAL } else { 0 };
        let encap = match framer {
            Framer::Sealed(kp) => {
                let Some(counter) = kp.take(1) else {
                    return done(Drain::Frame(n), packets, bytes); // exhausted: Python refuses
                };
                seal_one(kp, &mut out[b.off..], pkt, VT_DATA, flags, counter);
                counter as u16
            }
            Framer::Plain { device_id, encap } => {
                let e = *encap;
                let d = &mut out[b.off..b.off + need];
                write_plain(d, len, *device_id, e, flags);
                d[FIXED_HEADER_LEN..].copy_from_slice(pkt);
                *encap = e.wrapping_add(1);
                e
            }
        };
        let q = &mut quotes[quote_at..quote_at + QUOTE_SLOT];
        let ql = len.min(QUOTE_LEN);
        q[..2].copy_from_slice(&encap.to_be_bytes());
        q[2] = ql as u8;
        q[3..3 + ql].copy_from_slice(&pkt[..ql]);
        if b.count == 0 {
            b.seg = need;
        }
        b.ecn = ecn;
        b.off += need;
        b.count += 1;
        packets += 1;
        bytes += len;
        if fresh || need < b.seg || b.count >= MAX_GSO_SEGMENTS || n > 2000 {
            return done(Drain::Send, packets, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::parse_sealed;
    use crate::plain::parse_plain;

    struct Frames(Vec<Vec<u8>>);

    impl Source for Frames {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, i32> {
            if self.0.is_empty() {
                return Err(libc::EAGAIN);
            }
            let f = self.0.remove(0);
            buf[..f.len()].copy_from_slice(&f);
            Ok(f.len())
        }
    }

    fn ping(tos: u8, size: usize) -> Vec<u8> {
        let mut p = vec![
            0x45, tos, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.resize(size, 0xA5);
        p
    }

    fn vnet(p: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_LEN];
        f.extend_from_slice(p);
        f
    }

    struct Rig {
        src: Frames,
        buf: Vec<u8>,
        out: Vec<u8>,
        quotes: Vec<u8>,
    }

    impl Rig {
        fn new(frames: Vec<Vec<u8>>) -> Rig {
            Rig {
                src: Frames(frames),
                buf: vec![0u8; 65600],
                out: vec![0u8; GSO_BUDGET + 2048],
                quotes: vec![0u8; 64 * QUOTE_SLOT],
            }
        }

        fn go(&mut self, f: &mut Framer, vnet: bool, b: &mut Batch, fresh: bool) -> Drained {
            let (buf, out, q) = (&mut self.buf, &mut self.out, &mut self.quotes);
            drain(f, &mut self.src, vnet, buf, out, b, 1408, fresh, q)
        }
    }

    #[test]
    fn seals_what_is_ready_and_hands_back_what_is_not_simple() {
        let kp = Keypair::new("aes-256-gcm", &[1; 32], &[2; 32], 3, 4).unwrap();
        let mut tso = vnet(&ping(0, 3000));
        tso[1] = 1; // GSO_TCPV4
        let mut r = Rig::new(vec![
            vnet(&ping(0, 84)),
            vnet(&ping(0, 84)),
            vnet(&ping(0, 60)), // shorter: ends the batch
            vnet(&ping(2, 84)), // another ECN field: Python flushes first
            tso,
        ]);
        let mut b = Batch::default();
        let mut f = Framer::Sealed(&kp);
        let d = r.go(&mut f, true, &mut b, true);
        assert_eq!((d.why, d.packets, b.count), (Drain::Send, 1, 1));
        let d = r.go(&mut f, true, &mut b, false);
        assert_eq!((d.why, d.packets, b.count), (Drain::Send, 2, 3));
        assert_eq!(
            (b.seg, b.off),
            (MIN_SEALED + 84, 3 * MIN_SEALED + 84 * 2 + 60)
        );
        let h = parse_sealed(&r.out[..b.seg]).expect("sealed DATA");
        assert_eq!((h.counter, h.inner_len), (0, 84));
        assert_eq!(r.quotes[QUOTE_SLOT..QUOTE_SLOT + 3], [0, 1, 68]);
        let d = r.go(&mut f, true, &mut b, false);
        assert_eq!(d.why, Drain::Frame(VNET_LEN + 84));
        let mut b = Batch::default();
        assert_eq!(
            r.go(&mut f, true, &mut b, false).why,
            Drain::Frame(VNET_LEN + 3000)
        );
        assert_eq!(r.go(&mut f, true, &mut b, false).why, Drain::Empty);
    }

    #[test]
    fn plain_frames_with_running_encap_ids_and_skips_link_local() {
        let mut mdns = ping(0, 40);
        mdns[16..19].copy_from_slice(&[224, 0, 0]);
        let mut r = Rig::new(vec![ping(0, 40), mdns, ping(0, 40)]);
        let mut b = Batch::default();
        let mut f = Framer::Plain {
            device_id: 9,
            encap: 0xFFFF,
        };
        let d = r.go(&mut f, false, &mut b, false);
        assert_eq!((d.why, d.packets, d.bytes), (Drain::Empty, 2, 80));
        let out = &r.out;
        let (a, c) = (
            parse_plain(&out[..52]).unwrap(),
            parse_plain(&out[52..104]).unwrap(),
        );
        assert_eq!((a.encap, c.encap, a.device_id), (0xFFFF, 0, 9));
        assert!(matches!(f, Framer::Plain { encap: 1, .. }));
    }
}
