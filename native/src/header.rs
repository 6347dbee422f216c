//! The canonical sealed DATA header (docs/PROTOCOL.md, core/session.py `DATA_HEADER`):
//! `!BBHHHHHBBIBBQ` = ver/type, HLEN (7 words), OLDPACKETLEN, DeviceID, EncapID, Flags,
//! Checksum, RECEIVER_INDEX TLV (0x82, 4, index), COUNTER TLV (0x81, 8, counter).

pub const DATA_HEADER_LEN: usize = 28;
pub const TAG_LEN: usize = 16;
pub const MIN_SEALED: usize = DATA_HEADER_LEN + TAG_LEN;
pub const FIXED_HEADER_LEN: usize = 12;
pub const VT_DATA: u8 = 0x11;
pub const HLEN_WORDS: u8 = 7;
pub const OPT_RECEIVER_INDEX: u8 = 0x82;
pub const OPT_COUNTER: u8 = 0x81;
pub const F_AUTHENTICATED: u16 = 0x8000;
pub const F_ENCRYPTED: u16 = 0x4000;
pub const F_CSUM_PARTIAL: u16 = 0x1000;
pub const F_CONTINUATION: u16 = 0x0800;
pub const SEALED: u16 = F_AUTHENTICATED | F_ENCRYPTED;
pub const ALLOWED: u16 = SEALED | F_CSUM_PARTIAL | F_CONTINUATION;
/// core/constants.py REJECT_AFTER_MESSAGES.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The header words that never change (HLEN and both TLV type/length words), pre-summed.
pub const DATA_CONST: u64 =
    HLEN_WORDS as u64 + ((OPT_RECEIVER_INDEX as u64) << 8) + 4 + ((OPT_COUNTER as u64) << 8) + 8;

/// A canonical sealed header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub inner_len: usize,
    pub flags: u16,
    pub index: u32,
    pub counter: u64,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// `x % 0xFFFF`, with 0 read as 0xFFFF (the one's-complement fold the Python side uses).
pub fn fold(x: u64) -> u64 {
    match x % 0xFFFF {
        0 => 0xFFFF,
        r => r,
    }
}

/// Sum of the big-endian 16-bit words of `b` (even length), reduced mod 0xFFFF.
pub fn word_sum(b: &[u8]) -> u64 {
    let mut s: u64 = 0;
    for w in b.chunks_exact(2) {
        s += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    s % 0xFFFF
}

/// The datagram `d` if it is a canonical sealed DATA packet whose header checks out (the same
/// test as the inline one in helper/datapath.py `run_rx`); None: it takes the general route.
pub fn parse_sealed(d: &[u8]) -> Option<Sealed> {
    if d.len() < MIN_SEALED || d[0] != VT_DATA {
        return None;
    }
    let inner_len = be16(d, 2) as usize;
    let dev = be16(d, 4) as u64;
    let encap = be16(d, 6) as u64;
    let flags = be16(d, 8);
    let csum = be16(d, 10) as u64;
    let index = u32::from_be_bytes([d[14], d[15], d[16], d[17]]);
    let counter = u64::from_be_bytes(d[20..28].try_into().ok()?);
    if d[1] != HLEN_WORDS
        || d[12] != OPT_RECEIVER_INDEX
        || d[13] != 4
        || d[18] != OPT_COUNTER
        || d[19] != 8
        || d.len() != inner_len + MIN_SEALED
        || flags & !ALLOWED != 0
        || flags & SEALED != SEALED
    {
        return None;
    }
    let sum = DATA_CONST
        + ((VT_DATA as u64) << 8)
        + inner_len as u64
        + dev
        + encap
        + flags as u64
        + csum
        + (index as u64 % 0xFFFF)
        + counter % 0xFFFF;
    if !sum.is_multiple_of(0xFFFF) {
        return None;
    }
    Some(Sealed {
        inner_len,
        flags,
        index,
        counter,
    })
}

/// Write the canonical header for a DATA packet at `out[..28]`.
pub fn write_sealed(
    out: &mut [u8],
    inner_len: usize,
    device_id: u16,
    flags: u16,
    index: u32,
    counter: u64,
) {
    let encap = (counter & 0xFFFF) as u16;
    let flags = flags | SEALED;
    let s = DATA_CONST
        + ((VT_DATA as u64) << 8)
        + inner_len as u64
        + device_id as u64
        + encap as u64
        + flags as u64
        + index as u64 % 0xFFFF
        + counter % 0xFFFF;
    let csum = !(fold(s) as u16);
    out[0] = VT_DATA;
    out[1] = HLEN_WORDS;
    out[2..4].copy_from_slice(&(inner_len as u16).to_be_bytes());
    out[4..6].copy_from_slice(&device_id.to_be_bytes());
    out[6..8].copy_from_slice(&encap.to_be_bytes());
    out[8..10].copy_from_slice(&flags.to_be_bytes());
    out[10..12].copy_from_slice(&csum.to_be_bytes());
    out[12] = OPT_RECEIVER_INDEX;
    out[13] = 4;
    out[14..18].copy_from_slice(&index.to_be_bytes());
    out[18] = OPT_COUNTER;
    out[19] = 8;
    out[20..28].copy_from_slice(&counter.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_header_parses() {
        let mut d = vec![0u8; MIN_SEALED + 5];
        write_sealed(
            &mut d,
            5,
            0x1234,
            F_CSUM_PARTIAL | F_CONTINUATION,
            0xdead_beef,
            1 << 40,
        );
        let s = parse_sealed(&d).unwrap();
        assert_eq!(s.inner_len, 5);
        assert_eq!(s.index, 0xdead_beef);
        assert_eq!(s.counter, 1 << 40);
        assert_eq!(s.flags, SEALED | F_CSUM_PARTIAL | F_CONTINUATION);
        // the checksum is the RFC 1071 sum of the header words
        assert_eq!(word_sum(&d[..DATA_HEADER_LEN]), 0);
        for i in 0..DATA_HEADER_LEN {
            let mut e = d.clone();
            e[i] ^= 0x40;
            assert!(parse_sealed(&e).is_none(), "byte {i}");
        }
    }
}
