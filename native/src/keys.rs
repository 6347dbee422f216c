//! A keypair's native half: both directions' AEAD keys, the send counter, the replay window.
//! Python never gets a key back out of it; the keys are zeroed when it is dropped.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::header::{DATA_HEADER_LEN, REJECT_AFTER_MESSAGES, TAG_LEN};
use crate::replay::{Verdict, Window};

/// One direction's key, in its own heap allocation so that its bytes (ring's expanded key
/// schedule, which ring itself never wipes) can be zeroed when it is dropped.
pub struct Key(Box<MaybeUninit<LessSafeKey>>);

impl Key {
    pub fn new(cipher: &str, key: &[u8]) -> Result<Key, String> {
        let (alg, key) = match cipher {
            "aes-256-gcm" if key.len() == 32 => (&aead::AES_256_GCM, key),
            "aes-128-gcm" if key.len() == 32 => (&aead::AES_128_GCM, &key[..16]),
            "chacha20-poly1305" if key.len() == 32 => (&aead::CHACHA20_POLY1305, key),
            _ => {
                return Err(format!(
                    "unknown cipher {cipher:?} or key of {} bytes",
                    key.len()
                ))
            }
        };
        let unbound = UnboundKey::new(alg, key).map_err(|_| "bad key".to_string())?;
        let mut slot = Box::new(MaybeUninit::uninit());
        slot.write(LessSafeKey::new(unbound));
        Ok(Key(slot))
    }

    fn get(&self) -> &LessSafeKey {
        // SAFETY: the slot is written in `new` before the Key exists and only un-initialised
        // in `drop`, after which it is never read.
        unsafe { self.0.assume_init_ref() }
    }

    /// Seal `buf[..len - TAG_LEN]` in place, the tag into the last TAG_LEN bytes.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) {
        let split = buf.len() - TAG_LEN;
        let (body, tag) = buf.split_at_mut(split);
        let t = self
            .get()
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), body)
            .expect("ring refuses only inputs longer than 2^36 bytes");
        tag.copy_from_slice(t.as_ref());
    }

    /// Open `buf` (ciphertext ‖ tag) in place; the plaintext is `buf[..len - TAG_LEN]`.
    pub fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> bool {
        self.get()
            .open_in_place(nonce(counter), Aad::from(aad), buf)
            .is_ok()
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: initialised since `new`; dropped exactly once, here.
        unsafe { self.0.assume_init_drop() };
        // The dead value's bytes, as MaybeUninit bytes (any content is valid for those).
        let bytes = std::ptr::slice_from_raw_parts_mut(
            self.0.as_mut_ptr() as *mut MaybeUninit<u8>,
            std::mem::size_of::<LessSafeKey>(),
        );
        // SAFETY: the pointer and length cover exactly this Box's allocation, which we own
        // and which nothing else references; MaybeUninit<u8> has no validity requirement.
        unsafe { (*bytes).zeroize() };
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// What opening a packet found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    Ok,
    BadTag,
    Replay(Verdict),
}

pub struct Keypair {
    pub send: Key,
    pub recv: Key,
    /// The next nonce counter. The only source of counters for this keypair: Python's sealing
    /// path takes its counters here too (one atomic add each), so no counter is ever issued
    /// twice, whichever thread seals and whether or not it holds the GIL.
    next: AtomicU64,
    pub window: Mutex<Window>,
    pub device_id: u16,
    pub remote_index: u32,
}

impl Keypair {
    pub fn new(
        cipher: &str,
        send_key: &[u8],
        recv_key: &[u8],
        device_id: u16,
        remote_index: u32,
    ) -> Result<Keypair, String> {
        Ok(Keypair {
            send: Key::new(cipher, send_key)?,
            recv: Key::new(cipher, recv_key)?,
            next: AtomicU64::new(0),
            window: Mutex::new(Window::default()),
            device_id,
            remote_index,
        })
    }

    /// Take `n` consecutive counters; None if that would reach the nonce limit.
    pub fn take(&self, n: u64) -> Option<u64> {
        let first = self.next.fetch_add(n, Ordering::Relaxed);
        if first >= REJECT_AFTER_MESSAGES || REJECT_AFTER_MESSAGES - first < n {
            return None;
        }
        Some(first)
    }

    pub fn peek(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    pub fn set_next(&self, counter: u64) {
        self.next.store(counter, Ordering::Relaxed)
    }

    /// Open a sealed packet's body in place (header = the AAD) and consult the window only
    /// once the tag checked out (core/session.py `open_sealed`).
    pub fn open(&self, header: &[u8], counter: u64, body: &mut [u8]) -> Opened {
        if !self.recv.open(counter, header, body) {
            return Opened::BadTag;
        }
        let v = self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(counter);
        if v != Verdict::Ok {
            return Opened::Replay(v);
        }
        Opened::Ok
    }
}

pub const OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

impl Keypair {
    /// One counter for Python's sealing path, which checks the limit itself (as
    /// core/session.py `seal_into` does with itertools.count); None only at u64's end.
    pub fn take_unchecked(&self) -> Option<u64> {
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        (c != u64::MAX).then_some(c)
    }
}
