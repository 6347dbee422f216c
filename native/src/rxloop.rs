//! The raw-IP receive loop of a one-peer tunnel, native across batches: one call receives
//! (recvmmsg), opens, checks, coalesces and writes to the TUN device batch after batch with
//! the GIL released, and comes back to Python only for what Python must see. The per-run
//! work is `rx::rx_run`'s (so the verdicts are exactly the per-batch path's); what this adds
//! is not going back to Python between runs. It returns when:
//! - a run is not all canonical sealed DATA of the session it was given (a handshake, a
//!   cookie, another session after a rekey, a packet that could not be opened natively...):
//!   the run is left in the caller's buffer with the position Python takes it up at;
//! - a run comes from another address than the peer's (a roam, a stranger): likewise;
//! - the socket has nothing for the receive timeout (SO_RCVTIMEO, or the poll's), or reports
//!   an error (ICMP errors are read from the error queue by Python);
//! - another socket of the transport is readable (a listening end reads two);
//! - the deadline Python gave passes (its book-keeping: counters, timers, keys retired).
//!
//! The specification is helper/datapath.py `run_rx` with `RawTransport.receive`: the loop
//! hands Python exactly the runs and the positions that loop would have reached.

use crate::coalesce::{Coalescer, Out, Reason};
use crate::mmsg::{RecvBatch, Source, Taken};
use crate::rx::{rx_run, Run, Status, NO_CONT};

/// Why the loop returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Why {
    /// A run for Python is in the buffer (`taken`), to be taken up at `pos`.
    Handoff = 0,
    /// Nothing arrived within the receive timeout (EAGAIN).
    Idle = 1,
    /// The receive failed with `errno` (an error to read from the error queue, a closed
    /// socket...).
    Error = 2,
    /// The deadline passed.
    Deadline = 3,
    /// Another of the transport's sockets is readable.
    Other = 4,
}

/// What one loop call did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopResult {
    pub why: Why,
    pub taken: Option<Taken>,
    pub pos: usize,
    pub errno: i32,
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC seconds (Python's time.monotonic) of the last run with an
    /// authenticated packet; 0 if none.
    pub last_auth: f64,
}

/// Where the loop's runs come from: a raw socket's recvmmsg batches in the module, a list of
/// batches in tests and fuzzing.
pub trait Runs {
    /// Make sure a run is pending, waiting as the socket does: Ok(false) when nothing came
    /// (the timeout), Err(errno) on an error, Err(-1) when another socket is readable.
    fn fill(&mut self, batch: &mut RecvBatch) -> Result<bool, i32>;
}

/// The time `time.monotonic()` reads.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Run batch after batch for one session (`run`, whose `outer_ecn` is set per run) until
/// something needs Python or `deadline` (monotonic seconds) passes. `expect` is the peer's
/// address; `buf` (at least RUN_BUDGET bytes) receives each run.
#[allow(clippy::too_many_arguments)]
pub fn rx_loop(
    runs: &mut dyn Runs,
    batch: &mut RecvBatch,
    run: &mut Run,
    expect: &Source,
    buf: &mut [u8],
    sink: &mut Coalescer,
    out: &mut dyn Out,
    deadline: f64,
) -> LoopResult {
    let mut r = LoopResult {
        why: Why::Deadline,
        taken: None,
        pos: 0,
        errno: 0,
        packets: 0,
        bytes: 0,
        last_auth: 0.0,
    };
    loop {
        if batch.pending() == 0 {
            match runs.fill(batch) {
                Ok(true) => {}
                Ok(false) => {
                    r.why = Why::Idle;
                    return r;
                }
                Err(-1) => {
                    r.why = Why::Other;
                    return r;
                }
                Err(e) => {
                    r.why = Why::Error;
                    r.errno = e;
                    return r;
                }
            }
        }
        let Some(t) = batch.take(buf) else {
            continue; // fill said a run was pending: cannot happen, and harmless
        };
        if t.n == 0 {
            sink.count(Reason::BadHeader); // an empty datagram: as run_rx counts it
        } else if t.src != *expect {
            r.why = Why::Handoff;
            r.taken = Some(t);
            return r;
        } else {
            run.outer_ecn = t.ecn;
            let got = rx_run(run, &mut buf[..t.n], 0, t.seg, sink, out, NO_CONT, None);
            r.packets += got.packets;
            r.bytes += got.bytes;
            // The batch's end, as `_NativeRx.batch` flushes it (and before any hand-off,
            // whose run Python coalesces after what was delivered here).
            sink.flush(out);
            if got.packets != 0 {
                r.last_auth = monotonic();
            }
            if got.status != Status::End {
                r.why = Why::Handoff;
                r.taken = Some(t);
                r.pos = got.pos;
                return r;
            }
        }
        if monotonic() >= deadline {
            r.why = Why::Deadline;
            return r;
        }
    }
}

/// A raw socket (`fd`) and, for a listening end, its other socket(s): with `poll` the loop
/// waits in poll(2) for all of them (the sockets are non-blocking), else in recvmmsg
/// (blocking with SO_RCVTIMEO).
pub struct Socket<'a> {
    pub fd: i32,
    pub others: &'a [i32],
    pub poll: bool,
    pub timeout_ms: i32,
}

impl Runs for Socket<'_> {
    fn fill(&mut self, batch: &mut RecvBatch) -> Result<bool, i32> {
        if self.poll {
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.fd)
                .chain(self.others.iter().copied())
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let n = loop {
                // SAFETY: `fds` is a live array of fds.len() pollfd structs.
                let n = unsafe {
                    libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, self.timeout_ms)
                };
                if n >= 0 || crate::mmsg::last_errno() != libc::EINTR {
                    break n;
                }
            };
            if n <= 0 {
                return if n == 0 {
                    Ok(false)
                } else {
                    Err(crate::mmsg::last_errno())
                };
            }
            if fds[0].revents == 0 {
                return Err(-1);
            }
        }
        match batch.recv(self.fd, 0) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(false),
                Some(c) => Err(c),
                None => Err(libc::EIO),
            },
        }
    }
}

#[cfg(feature = "python")]
pub(crate) mod python {
    //! `rx_loop` for Python (datapath.py `_NativeRx.raw_loop`).

    use pyo3::buffer::PyBuffer;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyBytes;

    use super::{rx_loop, Socket};
    use crate::mmsg::python::{mem, RawRx};
    use crate::mmsg::{Source, RUN_BUDGET};
    use crate::py::{Coalescer, Fd, Keypair, SourceFilter};
    use crate::rx::{Run, SourceFilter as CoreFilter};

    /// (why, errno, n, seg, ecn, source bytes, scope, pos, packets, inner_bytes, last_auth)
    type LoopTuple<'py> = (
        u8,
        i32,
        usize,
        usize,
        u8,
        Bound<'py, PyBytes>,
        u32,
        usize,
        u64,
        u64,
        f64,
    );

    /// Receive and handle runs from the raw socket `fd` for session `index` of `kp` until
    /// something needs Python (see rxloop.rs). `addr`/`scope`: the peer's address (packed);
    /// `others`: a listening end's other sockets, `poll`: wait in poll(2) for all (else in
    /// the blocking recvmmsg), `timeout_ms` for poll; `deadline`: time.monotonic() seconds.
    #[pyfunction]
    #[pyo3(signature = (rx, fd, kp, index, buf, sink, filter, owner, addr, scope, deadline,
                        others=Vec::new(), poll=false, timeout_ms=250))]
    #[allow(clippy::too_many_arguments)]
    fn rx_loop_raw<'py>(
        py: Python<'py>,
        rx: &Bound<'py, RawRx>,
        fd: i32,
        kp: &Bound<'py, Keypair>,
        index: u32,
        buf: &Bound<'py, PyAny>,
        sink: &Bound<'py, Coalescer>,
        filter: Option<&Bound<'py, SourceFilter>>,
        owner: &Bound<'py, PyAny>,
        addr: &[u8],
        scope: u32,
        deadline: f64,
        others: Vec<i32>,
        poll: bool,
        timeout_ms: i32,
    ) -> PyResult<LoopTuple<'py>> {
        let expect = match addr.len() {
            4 | 16 => {
                let mut a = [0u8; 16];
                a[..addr.len()].copy_from_slice(addr);
                Source {
                    v6: addr.len() == 16,
                    addr: a,
                    scope,
                }
            }
            _ => return Err(PyValueError::new_err("address must be 4 or 16 bytes")),
        };
        let b = PyBuffer::<u8>::get(buf)?;
        let m = mem(&b, true)?;
        if m.len < RUN_BUDGET {
            return Err(PyValueError::new_err("receive buffer too small"));
        }
        let empty = CoreFilter::default();
        let mut run = Run {
            kp: Some(&kp.get().0),
            index,
            filter: filter.map_or(&empty, |f| &f.get().0),
            owner: owner.as_ptr() as usize,
            outer_ecn: 0,
            stop_after_open: false,
        };
        let (rx, sink) = (rx.get(), sink.get());
        let run = &mut run;
        let r = py.allow_threads(move || {
            let m = m; // the whole Mem crosses (Send), not its raw fields
                       // SAFETY: `buf` is exported for this call (held in `b`) and is the receive
                       // loop's own: nothing else reads or writes it meanwhile.
            let out = unsafe { std::slice::from_raw_parts_mut(m.ptr, m.len) };
            let mut batch = rx.lock();
            let mut core = sink.lock();
            let mut sock = Socket {
                fd,
                others: &others,
                poll,
                timeout_ms,
            };
            rx_loop(
                &mut sock,
                &mut batch,
                run,
                &expect,
                out,
                &mut core,
                &mut Fd(sink.fd),
                deadline,
            )
        });
        let t = r.taken.unwrap_or(crate::mmsg::Taken {
            n: 0,
            seg: 0,
            ecn: 0,
            src: Source::default(),
        });
        Ok((
            r.why as u8,
            r.errno,
            t.n,
            t.seg,
            t.ecn,
            PyBytes::new(py, t.src.bytes()),
            t.src.scope,
            r.pos,
            r.packets,
            r.bytes,
            r.last_auth,
        ))
    }

    pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(rx_loop_raw, m)?)?;
        Ok(())
    }
}

/// Batches given in advance, as recvmmsg would have returned them (tests and fuzzing):
/// (payload, outer ECN field, source) per datagram; then nothing (the receive timeout).
pub struct Given(pub std::collections::VecDeque<Vec<(Vec<u8>, u8, Source)>>);

impl Runs for Given {
    fn fill(&mut self, batch: &mut RecvBatch) -> Result<bool, i32> {
        let Some(b) = self.0.pop_front() else {
            return Ok(false);
        };
        batch.clear();
        for (j, (p, ecn, src)) in b.iter().enumerate().take(crate::mmsg::MAX_BATCH) {
            batch.push_payload(j, p, *ecn, *src);
        }
        Ok(batch.pending() != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::MIN_SEALED;
    use crate::keys::Keypair;
    use crate::mmsg::RUN_BUDGET;
    use crate::rx::SourceFilter;
    use crate::tx::seal_one;

    fn src(last: u8) -> Source {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, last]);
        Source {
            v6: false,
            addr,
            scope: 0,
        }
    }

    fn udp4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 1, 0, 9,
        ];
        let c = !(crate::header::fold(crate::header::word_sum(&p)) as u16);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    fn sealed(kp: &Keypair, counter: u64) -> Vec<u8> {
        let p = udp4();
        let mut d = vec![0u8; MIN_SEALED + p.len()];
        seal_one(kp, &mut d, &p, 0x11, 0, counter);
        d
    }

    #[test]
    fn stays_native_across_batches_and_hands_back_what_python_must_see() {
        let kp = Keypair::new("aes-256-gcm", &[5; 32], &[5; 32], 1, 9).unwrap();
        let other = Keypair::new("aes-256-gcm", &[6; 32], &[6; 32], 2, 10).unwrap();
        let filter = SourceFilter {
            v4: vec![(10, 8, true)],
            v6: vec![],
        };
        let peer = src(1);
        let mut given = Given(
            [
                // two batches of the session's data, one with a replay and an empty datagram
                vec![
                    (sealed(&kp, 0), 0, peer),
                    (sealed(&kp, 1), 0, peer),
                    (sealed(&kp, 1), 0, peer),
                ],
                vec![(vec![], 0, peer), (sealed(&kp, 2), 3, peer)],
                // another session (a rekey): handed back at that datagram, in its run
                vec![(sealed(&kp, 3), 0, peer), (sealed(&other, 0), 0, peer)],
                // another address: handed back whole
                vec![(sealed(&kp, 4), 0, src(2))],
            ]
            .into_iter()
            .collect(),
        );
        let mut batch = RecvBatch::new(true);
        let mut run = Run {
            kp: Some(&kp),
            index: 9,
            filter: &filter,
            owner: 1,
            outer_ecn: 0,
            stop_after_open: false,
        };
        let mut buf = vec![0u8; RUN_BUDGET];
        let mut sink = Coalescer::new(false);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let far = f64::MAX;
        macro_rules! go {
            () => {
                rx_loop(
                    &mut given, &mut batch, &mut run, &peer, &mut buf, &mut sink, &mut out, far,
                )
            };
        }
        let r = go!();
        assert_eq!(
            (r.why, r.packets, r.pos),
            (Why::Handoff, 4, MIN_SEALED + 28)
        );
        let t = r.taken.unwrap();
        assert_eq!((t.n, t.seg), (2 * (MIN_SEALED + 28), MIN_SEALED + 28));
        assert!(r.last_auth > 0.0);
        assert_eq!(out.len(), 3); // 0, 1, 3: 2 was Not-ECT under CE
        let r = go!();
        assert_eq!((r.why, r.packets, r.pos), (Why::Handoff, 0, 0));
        assert_eq!(r.taken.unwrap().src, src(2));
        let r = go!();
        assert_eq!((r.why, r.packets), (Why::Idle, 0));
        // replay, empty datagram; the Not-ECT packet under CE dropped (RFC 6040)
        let got: Vec<u64> = sink.counts.to_vec();
        assert_eq!(got[crate::coalesce::Reason::Replay as usize], 1);
        assert_eq!(got[crate::coalesce::Reason::BadHeader as usize], 1);
        assert_eq!(got[crate::coalesce::Reason::EcnNotEctCe as usize], 1);
        // a deadline already past: one run, then back
        let mut given = Given(
            [
                vec![(sealed(&kp, 5), 0, peer)],
                vec![(sealed(&kp, 6), 0, peer)],
            ]
            .into_iter()
            .collect(),
        );
        let r = rx_loop(
            &mut given, &mut batch, &mut run, &peer, &mut buf, &mut sink, &mut out, 0.0,
        );
        assert_eq!((r.why, r.packets), (Why::Deadline, 1));
    }
}
