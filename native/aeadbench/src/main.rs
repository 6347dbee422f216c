//! Cost of sealing + opening one 1,420-byte segment with ring and with aws-lc-rs.
//! `cargo run --release -- <lib> <alg> <n>`; run under callgrind with n = N and n = 0 and
//! divide the difference by N for instructions per segment.
use std::hint::black_box;

const SEG: usize = 1420;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lib = args.get(1).map(String::as_str).unwrap_or("ring");
    let alg = args.get(2).map(String::as_str).unwrap_or("aes");
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let key = [7u8; 32];
    let aad = [1u8; 28];
    let mut buf = vec![0u8; SEG + 16];
    let t = std::time::Instant::now();
    match lib {
        "ring" => {
            use ring::aead::*;
            let a = if alg == "aes" { &AES_256_GCM } else { &CHACHA20_POLY1305 };
            let k = LessSafeKey::new(UnboundKey::new(a, &key).unwrap());
            for i in 0..n {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&i.to_be_bytes());
                let (body, tag) = buf.split_at_mut(SEG);
                let t = k
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), body)
                    .unwrap();
                tag.copy_from_slice(t.as_ref());
                let p = k
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut buf)
                    .unwrap();
                black_box(p);
            }
        }
        _ => {
            use aws_lc_rs::aead::*;
            let a = if alg == "aes" { &AES_256_GCM } else { &CHACHA20_POLY1305 };
            let k = LessSafeKey::new(UnboundKey::new(a, &key).unwrap());
            for i in 0..n {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&i.to_be_bytes());
                let (body, tag) = buf.split_at_mut(SEG);
                let t = k
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), body)
                    .unwrap();
                tag.copy_from_slice(t.as_ref());
                let p = k
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut buf)
                    .unwrap();
                black_box(p);
            }
        }
    }
    eprintln!("{lib} {alg} {n}: {:?}", t.elapsed());
}
