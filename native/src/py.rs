//! The Python face: a handful of classes and two batch functions (module `tunseal_native`).
//! Buffers are taken through the buffer protocol and worked on with the GIL released.

use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::coalesce::{Coalescer as Core, Out, REASONS};
use crate::header::{DATA_HEADER_LEN, TAG_LEN};
use crate::keys::{Keypair as CoreKeypair, Opened};
use crate::plain::{self, PlainCutter, PlainRun};
use crate::replay::Verdict;
use crate::rx::{self, Run, SourceFilter as CoreFilter};
use crate::single::{self, Drain, Framer, ReadFd};
use crate::tx::{self, TsoSealer};

/// A buffer's memory, to be turned into a slice inside `allow_threads`.
#[derive(Clone, Copy)]
struct Raw {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Raw is only made from a PyBuffer that the calling function keeps alive (and so
// exported: a bytearray cannot be resized or freed while exported) until the call returns;
// it crosses into the GIL-released closure of that same call and no further.
unsafe impl Send for Raw {}

impl Raw {
    fn of(b: &PyBuffer<u8>, writable: bool) -> PyResult<Raw> {
        if !b.is_c_contiguous() {
            return Err(PyValueError::new_err("buffer must be contiguous"));
        }
        if writable && b.readonly() {
            return Err(PyValueError::new_err("buffer must be writable"));
        }
        Ok(Raw {
            ptr: b.buf_ptr() as *mut u8,
            len: b.len_bytes(),
        })
    }

    /// SAFETY: the caller guarantees no other live Rust reference to this memory, and that
    /// no other thread writes it meanwhile (the data path's buffers are each one loop's own).
    unsafe fn slice<'a>(self) -> &'a mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: ptr/len describe the exported, contiguous buffer (see `Raw::of`).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// SAFETY: the caller guarantees no live `&mut` to this memory and no writer meanwhile.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: as for `slice`, read only.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Read a buffer-protocol object (bytes, bytearray, memoryview) with the GIL held.
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let b = PyBuffer::<u8>::get(obj)?;
    let r = Raw::of(&b, false)?;
    // SAFETY: exported (so alive and fixed in size) while `b` lives, through `f`; we hold the
    // GIL, so no Python code runs meanwhile, and the slice is only read.
    let s: &[u8] = unsafe { r.bytes() };
    Ok(f(s))
}

/// A keypair's native half: both keys (never handed back), the send counter and the one
/// replay window. Iterating it takes the next send counter (Python's sealing path does).
#[pyclass(frozen, module = "tunseal_native")]
pub(crate) struct Keypair(pub(crate) CoreKeypair);

#[pymethods]
impl Keypair {
    #[new]
    fn new(
        cipher: &str,
        send_key: &[u8],
        recv_key: &[u8],
        device_id: u16,
        remote_index: u32,
    ) -> PyResult<Self> {
        CoreKeypair::new(cipher, send_key, recv_key, device_id, remote_index)
            .map(Keypair)
            .map_err(PyValueError::new_err)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next send counter (unchecked: the caller refuses one past the nonce limit).
    fn __next__(&self) -> PyResult<u64> {
        self.0
            .take_unchecked()
            .ok_or_else(|| PyStopIteration::new_err(()))
    }

    #[getter]
    fn next_counter(&self) -> u64 {
        self.0.peek()
    }

    /// Tests only: make the next counter `counter` (tests/unit/protocol_helpers.py).
    fn set_next_counter(&self, counter: u64) {
        self.0.set_next(counter)
    }

    /// Seal `inner` at `out[offset:]` with `counter` (core/session.py `seal_into`).
    #[allow(clippy::too_many_arguments)]
    fn seal_into(
        &self,
        py: Python<'_>,
        out: &Bound<'_, PyAny>,
        offset: usize,
        inner: &Bound<'_, PyAny>,
        vt: u8,
        flags: u16,
        counter: u64,
    ) -> PyResult<usize> {
        let ob = PyBuffer::<u8>::get(out)?;
        let ib = PyBuffer::<u8>::get(inner)?;
        let (o, i) = (Raw::of(&ob, true)?, Raw::of(&ib, false)?);
        let need = DATA_HEADER_LEN + i.len + TAG_LEN;
        if offset.checked_add(need).is_none_or(|end| end > o.len) || i.len > 0xFFFF {
            return Err(PyValueError::new_err("output buffer too small"));
        }
        let kp = &self.0;
        py.allow_threads(move || {
            // SAFETY: both buffers are exported for this call; a sealer never seals a buffer
            // into itself, and if `inner` aliases `out` we copy it first.
            let inner = unsafe { i.bytes() }.to_vec(); // copied before `out` is borrowed
            let out = unsafe { o.slice() };
            Ok(tx::seal_one(
                kp,
                &mut out[offset..offset + need],
                &inner,
                vt,
                flags,
                counter,
            ))
        })
    }

    /// Open: the plaintext, or 1 (bad tag), 2 (duplicate), 3 (too old / past the limit).
    fn open(
        &self,
        py: Python<'_>,
        header: &Bound<'_, PyAny>,
        ciphertext: &Bound<'_, PyAny>,
        counter: u64,
    ) -> PyResult<PyObject> {
        let mut body = with_bytes(ciphertext, |c| c.to_vec())?;
        let r = with_bytes(header, |h| self.0.open(h, counter, &mut body))?;
        Ok(match r {
            Opened::Ok => {
                body.truncate(body.len().saturating_sub(TAG_LEN));
                PyBytes::new(py, &body).into_any().unbind()
            }
            Opened::BadTag => 1u8.into_pyobject(py)?.into_any().unbind(),
            Opened::Replay(Verdict::Duplicate) => 2u8.into_pyobject(py)?.into_any().unbind(),
            Opened::Replay(_) => 3u8.into_pyobject(py)?.into_any().unbind(),
        })
    }

    /// core/replay.py `ReplayWindow.update` / `check` on this keypair's one window.
    fn replay_update(&self, counter: u64) -> u8 {
        self.0
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(counter) as u8
    }

    fn replay_check(&self, counter: u64) -> u8 {
        self.0
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(counter) as u8
    }

    #[getter]
    fn replay_highest(&self) -> u64 {
        self.0
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .highest()
    }

    fn __repr__(&self) -> String {
        format!(
            "tunseal_native.Keypair(remote={:#x}, next={})",
            self.0.remote_index,
            self.0.peek()
        )
    }
}

pub(crate) struct Fd(pub(crate) i32);

impl Out for Fd {
    fn write(&mut self, frame: &[u8]) -> bool {
        loop {
            // SAFETY: frame is a valid slice for its length; write(2) only reads it.
            let r = unsafe { libc::write(self.0, frame.as_ptr().cast(), frame.len()) };
            if r >= 0 {
                return true;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }
}

/// The receive loop's coalescer and drop counters, writing to the TUN fd (offload.py
/// `Coalescer`'s interface: add, continue_run, flush, reset; plus take_drops).
#[pyclass(frozen, module = "tunseal_native")]
pub(crate) struct Coalescer {
    pub(crate) fd: i32,
    core: Mutex<Core>,
}

impl Coalescer {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Coalescer {
    #[new]
    #[pyo3(signature = (fd, vnet=true))]
    fn new(fd: i32, vnet: bool) -> Self {
        Coalescer {
            fd,
            core: Mutex::new(Core::new(vnet)),
        }
    }

    #[pyo3(signature = (pkt, partial, owner=None))]
    fn add(
        &self,
        pkt: &Bound<'_, PyAny>,
        partial: bool,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let o = owner.map_or(0, |o| o.as_ptr() as usize);
        with_bytes(pkt, |p| self.lock().add(&mut Fd(self.fd), p, partial, o))
    }

    #[pyo3(signature = (pkt, owner=None))]
    fn continue_run(
        &self,
        pkt: &Bound<'_, PyAny>,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let o = owner.map_or(0, |o| o.as_ptr() as usize);
        with_bytes(pkt, |p| self.lock().continue_run(&mut Fd(self.fd), p, o))
    }

    fn flush(&self, py: Python<'_>) {
        py.allow_threads(|| self.lock().flush(&mut Fd(self.fd)))
    }

    fn reset(&self) {
        self.lock().reset()
    }

    /// The counts since the last call, by reason name (only the non-zero ones).
    fn take_drops(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.lock();
        let out = REASONS
            .iter()
            .zip(c.counts.iter())
            .filter(|(_, &n)| n != 0)
            .map(|(r, &n)| (*r, n))
            .collect();
        c.counts = [0; REASONS.len()];
        out
    }

    /// Outer CE marks passed on to inner packets since the last call (RFC 6040).
    fn take_marks(&self) -> u64 {
        std::mem::take(&mut self.lock().marks)
    }
}

/// The inner source addresses one peer may use (see rx.rs).
#[pyclass(frozen, module = "tunseal_native")]
pub(crate) struct SourceFilter(pub(crate) CoreFilter);

#[pymethods]
impl SourceFilter {
    #[new]
    fn new(v4: Vec<(u32, u8, bool)>, v6: Vec<(u128, u8, bool)>) -> PyResult<Self> {
        if v4.iter().any(|e| e.1 > 32) || v6.iter().any(|e| e.1 > 128) {
            return Err(PyValueError::new_err("prefix length out of range"));
        }
        Ok(SourceFilter(CoreFilter { v4, v6 }))
    }

    fn allows(&self, pkt: &Bound<'_, PyAny>) -> PyResult<bool> {
        with_bytes(pkt, |p| self.0.allows(p))
    }
}

/// What `seal_tso` and `frame_tso_plain` share: export the frame and the output buffer
/// (refused if they overlap), make the cutter, and fill GSO batches with the GIL released,
/// calling Python's `flush(end, seg)` (which sends the batch and returns the new offset)
/// between them. None: the cutter declined the frame (the generic path takes it).
fn cut_frame<C: Send>(
    py: Python<'_>,
    frame: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    off: usize,
    flush: &Bound<'_, PyAny>,
    make: impl FnOnce(&[u8]) -> Option<C> + Send,
    fill: impl Fn(&mut C, &[u8], &mut [u8], usize) -> tx::Batch + Sync,
) -> PyResult<Option<(tx::Batch, C)>> {
    let fb = PyBuffer::<u8>::get(frame)?;
    let ob = PyBuffer::<u8>::get(out)?;
    let (f, o) = (Raw::of(&fb, false)?, Raw::of(&ob, true)?);
    if overlap(f, o) {
        return Err(PyValueError::new_err("frame and output buffer overlap"));
    }
    // SAFETY (both slices below): the buffers are exported until this function returns, do
    // not overlap (checked), and no slice of `out` is alive while Python's flush reads it.
    let frame_of = move || -> &[u8] { unsafe { f.bytes() } };
    let Some(mut c) = py.allow_threads(move || make(frame_of())) else {
        return Ok(None);
    };
    let mut off = off;
    loop {
        let (cutter, fill) = (&mut c, &fill);
        let b = py.allow_threads(move || fill(cutter, frame_of(), unsafe { o.slice() }, off));
        if b.done {
            return Ok(Some((b, c)));
        }
        off = flush.call1((b.off, b.seg))?.extract()?;
    }
}

/// Cut and seal one TSO frame into `out` from `off`; `flush(end, seg)` sends a full batch
/// and returns the new offset. Returns (off, seg, count, inner_bytes, first_counter); count
/// -1: not a frame this cuts (use the generic path).
#[pyfunction]
fn seal_tso(
    py: Python<'_>,
    kp: &Bound<'_, Keypair>,
    frame: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    off: usize,
    flush: &Bound<'_, PyAny>,
    mtu: usize,
) -> PyResult<(usize, usize, i64, usize, u64)> {
    let kp = &kp.get().0;
    let make = move |f: &[u8]| TsoSealer::new(kp, f, mtu);
    let fill = move |s: &mut TsoSealer, f: &[u8], o: &mut [u8], at| s.fill(kp, f, o, at);
    Ok(match cut_frame(py, frame, out, off, flush, make, fill)? {
        Some((b, s)) => (
            b.off,
            b.seg,
            s.count() as i64,
            s.inner_bytes(),
            s.first_counter,
        ),
        None => (off, 0, -1, 0, 0),
    })
}

/// `plain` mode's `seal_tso` (offload.py `frame_tso_plain`): cut one TSO frame into
/// segments with the 12-byte header into `out` from `off`; `flush(end, seg)` sends a full
/// batch and returns the new offset. Returns (off, seg, count, inner_bytes, next_encap);
/// count -1: not a frame this cuts (use the generic path).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn frame_tso_plain(
    py: Python<'_>,
    frame: &Bound<'_, PyAny>,
    device_id: u16,
    encap: u16,
    out: &Bound<'_, PyAny>,
    off: usize,
    flush: &Bound<'_, PyAny>,
    mtu: usize,
) -> PyResult<(usize, usize, i64, usize, u16)> {
    let make = move |f: &[u8]| PlainCutter::new(f, mtu, device_id, encap);
    let fill = |c: &mut PlainCutter, f: &[u8], o: &mut [u8], at| c.fill(f, o, at);
    Ok(match cut_frame(py, frame, out, off, flush, make, fill)? {
        Some((b, c)) => (b.off, b.seg, c.count() as i64, c.inner_bytes(), c.encap),
        None => (off, 0, -1, 0, encap),
    })
}

/// `plain` mode's `rx_run`: handle a GRO run's plain datagrams from `start` until one must go
/// back to Python (see plain.rs). Returns (pos, status, device_id, cont_next, packets,
/// inner_bytes).
#[pyfunction]
#[pyo3(signature = (device_id, buf, n, start, seg, sink, filter, owner, outer_ecn, cont_next,
                    verdicts=None))]
#[allow(clippy::too_many_arguments)]
fn rx_plain(
    py: Python<'_>,
    device_id: Option<u16>,
    buf: &Bound<'_, PyAny>,
    n: usize,
    start: usize,
    seg: usize,
    sink: &Bound<'_, Coalescer>,
    filter: Option<&Bound<'_, SourceFilter>>,
    owner: &Bound<'_, PyAny>,
    outer_ecn: u8,
    cont_next: u64,
    verdicts: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, u8, u32, u64, u64, u64)> {
    let empty = CoreFilter::default();
    let run = PlainRun {
        device_id,
        filter: filter.map_or(&empty, |f| &f.get().0),
        owner: owner.as_ptr() as usize,
        outer_ecn,
    };
    let run = &run;
    rx_call(
        py,
        buf,
        n,
        start,
        verdicts,
        sink,
        move |data, verd, core, fd| {
            plain::rx_plain_run(run, data, start, seg, core, fd, cont_next, verd)
        },
    )
}

/// A transmit batch as Python's `_TxBatch` holds it: (off, seg, count, ecn).
type PyBatch = (usize, usize, usize, u8);

fn overlap(a: Raw, b: Raw) -> bool {
    a.ptr < b.ptr.wrapping_add(b.len) && b.ptr < a.ptr.wrapping_add(a.len)
}

/// Read the single packets the TUN fd has ready and seal them (with `kp`; `plain` mode
/// without one, EncapIDs from `encap`) into `out` after the batch (off, seg, count, ecn);
/// see single.rs. Returns (status, n, (off, seg, count, ecn), packets, inner_bytes, encap):
/// status 0 the device is empty, 1 send the batch now, 2 a frame of n bytes is in `buf`
/// for the general path, 3 the read failed with errno n. `quotes` gets a slot of
/// `single::QUOTE_SLOT` bytes per packet in the batch (for the ICMP ring).
#[pyfunction]
#[pyo3(signature = (kp, device_id, encap, fd, vnet, buf, out, batch, mtu, fresh, quotes))]
#[allow(clippy::too_many_arguments)]
fn drain_tx(
    py: Python<'_>,
    kp: Option<&Bound<'_, Keypair>>,
    device_id: u16,
    encap: u16,
    fd: i32,
    vnet: bool,
    buf: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    batch: PyBatch,
    mtu: usize,
    fresh: bool,
    quotes: &Bound<'_, PyAny>,
) -> PyResult<(u8, usize, PyBatch, usize, usize, u16)> {
    let bb = PyBuffer::<u8>::get(buf)?;
    let ob = PyBuffer::<u8>::get(out)?;
    let qb = PyBuffer::<u8>::get(quotes)?;
    let (b, o, q) = (
        Raw::of(&bb, true)?,
        Raw::of(&ob, true)?,
        Raw::of(&qb, true)?,
    );
    if overlap(b, o) || overlap(b, q) || overlap(o, q) {
        return Err(PyValueError::new_err("buffers overlap"));
    }
    let (off, seg, count, ecn) = batch;
    if off > o.len {
        return Err(PyValueError::new_err("offset beyond the output buffer"));
    }
    let mut framer = match kp {
        Some(k) => Framer::Sealed(&k.get().0),
        None => Framer::Plain { device_id, encap },
    };
    let mut st = single::Batch {
        off,
        seg,
        count,
        ecn,
    };
    let f = &mut framer;
    let s = &mut st;
    let d = py.allow_threads(move || {
        // SAFETY: the three buffers are exported for this call and do not overlap (checked);
        // each is the transmit loop's own, untouched by anyone else meanwhile.
        let (buf, out, quotes) = unsafe { (b.slice(), o.slice(), q.slice()) };
        single::drain(f, &mut ReadFd(fd), vnet, buf, out, s, mtu, fresh, quotes)
    });
    let (status, n) = match d.why {
        Drain::Empty => (0, 0),
        Drain::Send => (1, 0),
        Drain::Frame(n) => (2, n),
        Drain::Error(e) => (3, e as usize),
    };
    let encap = match framer {
        Framer::Plain { encap, .. } => encap,
        Framer::Sealed(_) => encap,
    };
    let batch = (st.off, st.seg, st.count, st.ecn);
    Ok((status, n, batch, d.packets, d.bytes, encap))
}

/// Handle a GRO run's datagrams from `start` until one must go back to Python (see rx.rs).
/// Returns (pos, status, index, cont_next, packets, inner_bytes).
#[pyfunction]
#[pyo3(signature = (kp, index, buf, n, start, seg, sink, filter, owner, outer_ecn, cont_next,
                    stop_after_open, verdicts=None))]
#[allow(clippy::too_many_arguments)]
fn rx_run(
    py: Python<'_>,
    kp: Option<&Bound<'_, Keypair>>,
    index: u32,
    buf: &Bound<'_, PyAny>,
    n: usize,
    start: usize,
    seg: usize,
    sink: &Bound<'_, Coalescer>,
    filter: Option<&Bound<'_, SourceFilter>>,
    owner: &Bound<'_, PyAny>,
    outer_ecn: u8,
    cont_next: u64,
    stop_after_open: bool,
    verdicts: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, u8, u32, u64, u64, u64)> {
    let empty = CoreFilter::default();
    let run = Run {
        kp: kp.map(|k| &k.get().0),
        index,
        filter: filter.map_or(&empty, |f| &f.get().0),
        owner: owner.as_ptr() as usize,
        outer_ecn,
        stop_after_open,
    };
    let run = &run;
    rx_call(
        py,
        buf,
        n,
        start,
        verdicts,
        sink,
        move |data, verd, core, fd| rx::rx_run(run, data, start, seg, core, fd, cont_next, verd),
    )
}

/// (pos, status, index or device id, cont_next, packets, inner_bytes) of a receive call.
type RxTuple = (usize, u8, u32, u64, u64, u64);

/// What `rx_run` and `rx_plain` share: export the receive buffer (its first `n` bytes) and the
/// verdicts buffer, refuse them if they overlap or `n` or `start` is beyond the buffer, and
/// run `f` on them with the sink's coalescer, the GIL released.
fn rx_call<F>(
    py: Python<'_>,
    buf: &Bound<'_, PyAny>,
    n: usize,
    start: usize,
    verdicts: Option<&Bound<'_, PyAny>>,
    sink: &Bound<'_, Coalescer>,
    f: F,
) -> PyResult<RxTuple>
where
    F: FnOnce(&mut [u8], Option<&mut [u8]>, &mut Core, &mut Fd) -> rx::RxResult + Send,
{
    let bb = PyBuffer::<u8>::get(buf)?;
    let b = Raw::of(&bb, true)?;
    if n > b.len || start > n {
        return Err(PyValueError::new_err("n or start beyond the buffer"));
    }
    let vb = verdicts.map(PyBuffer::<u8>::get).transpose()?;
    let v = vb.as_ref().map(|v| Raw::of(v, true)).transpose()?;
    if let Some(v) = v {
        if v.ptr < b.ptr.wrapping_add(b.len) && b.ptr < v.ptr.wrapping_add(v.len) {
            return Err(PyValueError::new_err("verdicts overlap the buffer"));
        }
    }
    let sink = sink.get();
    let r = py.allow_threads(move || {
        // SAFETY: `buf` and `verdicts` are exported for this call and do not overlap
        // (checked); the receive loop owns its buffer and nobody else touches it meanwhile.
        let data = &mut unsafe { b.slice() }[..n];
        let verd = v.map(|v| unsafe { v.slice() });
        let mut core = sink.lock();
        f(data, verd, &mut core, &mut Fd(sink.fd))
    });
    Ok((
        r.pos,
        r.status as u8,
        r.index,
        r.cont_next,
        r.packets,
        r.bytes,
    ))
}

#[pymodule]
fn tunseal_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Keypair>()?;
    m.add_class::<Coalescer>()?;
    m.add_class::<SourceFilter>()?;
    m.add_function(wrap_pyfunction!(seal_tso, m)?)?;
    m.add_function(wrap_pyfunction!(rx_run, m)?)?;
    crate::mmsg::python::register(m)?; // RawRx, send_mmsg (the raw-IP transport)
    crate::rxloop::python::register(m)?; // rx_loop_raw (raw IP, native across batches)
    m.add_function(wrap_pyfunction!(frame_tso_plain, m)?)?;
    m.add_function(wrap_pyfunction!(rx_plain, m)?)?;
    m.add_function(wrap_pyfunction!(drain_tx, m)?)?;
    m.add("QUOTE_SLOT", single::QUOTE_SLOT)?;
    m.add("API", 2)?;
    m.add("NO_CONT", rx::NO_CONT)?;
    m.add("REASONS", REASONS.to_vec())?;
    Ok(())
}
