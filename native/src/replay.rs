//! The anti-replay window, the same algorithm and size as core/replay.py (RFC 6479: a ring of
//! 64-bit blocks, one block more than the window). A keypair has exactly one: when the native
//! core is in use, Python's open path consults this one too (core/session.py).

use crate::header::REJECT_AFTER_MESSAGES;

/// core/constants.py REPLAY_WINDOW.
pub const REPLAY_WINDOW: u64 = 4096;
const BLOCKS: usize = (REPLAY_WINDOW / 64) as usize + 1;
pub const WINDOW_SIZE: u64 = (BLOCKS as u64 - 1) * 64;

/// core/replay.py Verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    Ok = 0,
    Duplicate = 1,
    TooOld = 2,
    Exhausted = 3,
}

#[derive(Clone, Debug)]
pub struct Window {
    bitmap: [u64; BLOCKS],
    last: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            bitmap: [0; BLOCKS],
            last: 0,
        }
    }
}

impl Window {
    pub fn highest(&self) -> u64 {
        self.last
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Verdict {
        if counter >= REJECT_AFTER_MESSAGES {
            return Verdict::Exhausted;
        }
        if counter > self.last {
            return Verdict::Ok;
        }
        if self.last - counter >= WINDOW_SIZE {
            return Verdict::TooOld;
        }
        if self.bitmap[((counter >> 6) % BLOCKS as u64) as usize] >> (counter & 63) & 1 != 0 {
            return Verdict::Duplicate;
        }
        Verdict::Ok
    }

    /// Check and record `counter`; call only for an authenticated packet.
    pub fn update(&mut self, counter: u64) -> Verdict {
        if counter >= REJECT_AFTER_MESSAGES {
            return Verdict::Exhausted;
        }
        if counter > self.last {
            let current = self.last >> 6;
            let block = counter >> 6;
            if block != current {
                let n = (block - current).min(BLOCKS as u64);
                for i in 1..=n {
                    self.bitmap[((current + i) % BLOCKS as u64) as usize] = 0;
                }
            }
            self.last = counter;
        } else if self.last - counter >= WINDOW_SIZE {
            return Verdict::TooOld;
        }
        let index = ((counter >> 6) % BLOCKS as u64) as usize;
        let bit = 1u64 << (counter & 63);
        if self.bitmap[index] & bit != 0 {
            return Verdict::Duplicate;
        }
        self.bitmap[index] |= bit;
        Verdict::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let mut w = Window::default();
        assert_eq!(w.update(0), Verdict::Ok);
        assert_eq!(w.update(0), Verdict::Duplicate);
        assert_eq!(w.update(5000), Verdict::Ok);
        assert_eq!(w.update(5000 - WINDOW_SIZE), Verdict::TooOld);
        assert_eq!(w.update(5000 - WINDOW_SIZE + 1), Verdict::Ok);
        assert_eq!(w.check(4999), Verdict::Ok);
        assert_eq!(w.update(REJECT_AFTER_MESSAGES), Verdict::Exhausted);
        assert_eq!(w.highest(), 5000);
    }
}
