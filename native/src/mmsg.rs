//! The raw-IP transport's batching. Raw sockets have no GSO or GRO, so a frame's sealed
//! segments leave in one `sendmmsg`, and one `recvmmsg` takes up to `MAX_BATCH` datagrams,
//! which are handed out as runs shaped like a UDP GRO run: consecutive datagrams from one
//! source with one outer ECN field, all the same size but the last, which may be shorter. The
//! receive loop then treats a run exactly as it treats a GRO run (`rx_run`, the coalescer).
//! The specification is helper/transport.py `RawTransport`, one datagram per system call: the
//! same bytes leave, and each datagram arrives with the same payload, source and ECN field.

use std::io;
use std::mem::{size_of, zeroed};
use std::ptr::{null_mut, read_unaligned};

/// Datagrams per system call (the kernel's limit is UIO_MAXIOV, 1024; a GSO batch is <= 64).
pub const MAX_BATCH: usize = 64;
/// Room for any datagram: an IPv4 packet with its header, or an IPv6 payload, is at most
/// 65,535 bytes, so nothing is ever truncated (the pure path reads into 69,632 bytes).
pub const SLOT: usize = 65536;
/// Largest run handed out at once (what the receive loop's buffer holds, as a GRO run).
pub const RUN_BUDGET: usize = 65536;
const CTRL: usize = 64;
const SOL_IP: i32 = 0;
const IP_TOS: i32 = 1;
const SOL_IPV6: i32 = 41;
const IPV6_TCLASS: i32 = 67;

/// Where a datagram came from: an IPv4 (first 4 bytes) or IPv6 address and its scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Source {
    pub v6: bool,
    pub addr: [u8; 16],
    pub scope: u32,
}

impl Source {
    pub fn bytes(&self) -> &[u8] {
        if self.v6 {
            &self.addr
        } else {
            &self.addr[..4]
        }
    }
}

/// A destination address, made once per send.
pub enum Dest {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl Dest {
    /// From 4 or 16 address bytes (network order); port 0, as the pure path sends to.
    pub fn new(addr: &[u8], scope: u32) -> Option<Dest> {
        if let Ok(a) = <[u8; 4]>::try_from(addr) {
            return Some(Dest::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a),
                },
                sin_zero: [0; 8],
            }));
        }
        let a = <[u8; 16]>::try_from(addr).ok()?;
        Some(Dest::V6(libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: a },
            sin6_scope_id: scope,
        }))
    }

    fn name(&self) -> (*mut libc::c_void, libc::socklen_t) {
        match self {
            Dest::V4(s) => (
                s as *const _ as *mut libc::c_void,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            Dest::V6(s) => (
                s as *const _ as *mut libc::c_void,
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// One IP_TOS / IPV6_TCLASS control message (CMSG_SPACE(sizeof(int)) bytes).
#[repr(C)]
struct TosCmsg {
    hdr: libc::cmsghdr,
    value: libc::c_int,
}

/// The calling thread's errno.
pub fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Send `buf` as datagrams of `seg` bytes (the last may be shorter) to `dest`, all with the
/// outer ECN field `ecn` (a control message when not 0), in as few `sendmmsg` calls as the
/// kernel allows. Returns (datagrams sent, the first error met or 0). A datagram the kernel
/// refuses is lost and the next one is tried, as the pure path's send per datagram does.
pub fn send_segments(
    fd: i32,
    buf: &[u8],
    seg: usize,
    dest: &Dest,
    ecn: u8,
    flags: i32,
) -> (usize, i32) {
    if buf.is_empty() {
        return (0, 0);
    }
    let seg = if seg == 0 { buf.len() } else { seg };
    let (name, namelen) = dest.name();
    let v6 = matches!(dest, Dest::V6(_));
    let cmsg = TosCmsg {
        hdr: libc::cmsghdr {
            cmsg_len: size_of::<libc::cmsghdr>() + size_of::<libc::c_int>(),
            cmsg_level: if v6 { SOL_IPV6 } else { SOL_IP },
            cmsg_type: if v6 { IPV6_TCLASS } else { IP_TOS },
        },
        value: (ecn & 3) as libc::c_int,
    };
    let mut iov = [libc::iovec {
        iov_base: null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is a plain C struct for which all-zero bytes (null pointers, zero
    // lengths) are a valid value.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    let count = buf.len().div_ceil(seg);
    let (mut i, mut sent, mut first_err) = (0usize, 0usize, 0i32);
    while i < count {
        let k = (count - i).min(MAX_BATCH);
        for j in 0..k {
            let off = (i + j) * seg;
            let len = seg.min(buf.len() - off);
            iov[j] = libc::iovec {
                iov_base: buf[off..].as_ptr() as *mut libc::c_void,
                iov_len: len,
            };
            let h = &mut hdrs[j].msg_hdr;
            h.msg_name = name;
            h.msg_namelen = namelen;
            h.msg_iov = &mut iov[j];
            h.msg_iovlen = 1;
            if ecn & 3 != 0 {
                h.msg_control = &cmsg as *const TosCmsg as *mut libc::c_void;
                h.msg_controllen = size_of::<TosCmsg>();
            } else {
                h.msg_control = null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
        }
        // SAFETY: the k headers point at live memory for the whole call: the iovecs (into
        // `buf`, in bounds by construction), the address and the control message; the
        // kernel only reads them (it writes msg_len, inside `hdrs`).
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), k as libc::c_uint, flags) };
        if r > 0 {
            sent += r as usize;
            i += r as usize;
            continue;
        }
        let e = if r < 0 { last_errno() } else { libc::EIO };
        if e == libc::EINTR {
            continue;
        }
        if first_err == 0 {
            first_err = e;
        }
        i += 1; // this datagram is lost; the next one is tried (bounded: one call each)
    }
    (sent, first_err)
}

/// One datagram of a received batch: its payload at `data[at..at + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dgram {
    pub at: usize,
    pub len: usize,
    pub ecn: u8,
    pub src: Source,
}

/// Consecutive datagrams `first..first + count` of a batch that go to the loop as one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first: usize,
    count: usize,
    seg: usize,
    bytes: usize,
    closed: bool,
}

/// What `take` copied out: `n` bytes of datagrams of `seg` bytes (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub n: usize,
    pub seg: usize,
    pub ecn: u8,
    pub src: Source,
}

/// The payload of what an IPv4 raw socket hands over (the IP header first): where it starts
/// and the outer ECN field, as helper/transport.py `RawTransport.receive` reads them.
pub fn ipv4_payload(d: &[u8]) -> (usize, u8) {
    let n = d.len();
    let ecn = if n >= 2 { d[1] & 3 } else { 0 };
    let ihl = if n > 0 {
        ((d[0] & 0x0F) as usize * 4).min(n)
    } else {
        0
    };
    (ihl, ecn)
}

/// The ECN field from a received control message (IPV6_TCLASS, or IP_TOS), else 0.
pub fn cmsg_ecn(ctrl: &[u8]) -> u8 {
    let hl = size_of::<libc::cmsghdr>();
    let align = size_of::<usize>();
    let mut pos = 0usize;
    let mut ecn = 0u8;
    while pos + hl <= ctrl.len() {
        // SAFETY: `hl` bytes at `pos` are inside `ctrl` (checked); cmsghdr is plain data
        // with no invalid bit patterns, read unaligned.
        let h: libc::cmsghdr = unsafe { read_unaligned(ctrl[pos..].as_ptr().cast()) };
        let len = h.cmsg_len;
        if len < hl || pos + len > ctrl.len() {
            break;
        }
        let data = &ctrl[pos + hl..pos + len];
        let tos = (h.cmsg_level == SOL_IPV6 && h.cmsg_type == IPV6_TCLASS)
            || (h.cmsg_level == SOL_IP && h.cmsg_type == IP_TOS);
        if tos && !data.is_empty() {
            ecn = data[0] & 3; // a byte (IP_TOS) or a host-order int: its low byte first
        }
        pos += len.div_ceil(align) * align;
    }
    ecn
}

/// A received batch and the runs it is cut into; one per raw socket's receive loop.
pub struct RecvBatch {
    /// IPv4 raw sockets hand over the IP header (TOS included); IPv6 ones the payload only.
    pub ip_header: bool,
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; CTRL / 8]>,
    dgrams: Vec<Dgram>,
    runs: Vec<Run>,
    next: usize,
}

impl RecvBatch {
    pub fn new(ip_header: bool) -> RecvBatch {
        RecvBatch {
            ip_header,
            // Zeroed allocation: the pages are only made real where datagrams land.
            data: vec![0u8; MAX_BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            names: vec![unsafe { zeroed() }; MAX_BATCH],
            ctrl: vec![[0u64; CTRL / 8]; MAX_BATCH],
            dgrams: Vec::with_capacity(MAX_BATCH),
            runs: Vec::with_capacity(MAX_BATCH),
            next: 0,
        }
    }

    /// Runs received and not yet taken.
    pub fn pending(&self) -> usize {
        self.runs.len() - self.next
    }

    /// Forget what is pending.
    pub fn clear(&mut self) {
        self.dgrams.clear();
        self.runs.clear();
        self.next = 0;
    }

    /// One `recvmmsg` of up to MAX_BATCH datagrams, waiting for the first one as the socket
    /// does (blocking with SO_RCVTIMEO, or not at all), the others only if already queued.
    /// Returns how many arrived; the error (EAGAIN, a socket error to read from the error
    /// queue, ...) as the socket reported it.
    pub fn recv(&mut self, fd: i32, flags: i32) -> io::Result<usize> {
        self.clear();
        let mut iov = [libc::iovec {
            iov_base: null_mut(),
            iov_len: 0,
        }; MAX_BATCH];
        // SAFETY: as in `send_segments`, all-zero is a valid mmsghdr.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let base = self.data.as_mut_ptr();
        for j in 0..MAX_BATCH {
            iov[j] = libc::iovec {
                // SAFETY: j * SLOT + SLOT <= data.len(): the slot is inside the allocation.
                iov_base: unsafe { base.add(j * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let h = &mut hdrs[j].msg_hdr;
            h.msg_name = (&mut self.names[j] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[j];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[j].as_mut_ptr().cast();
            h.msg_controllen = CTRL;
        }
        let got = loop {
            // SAFETY: every header points at memory this batch owns and nothing else borrows
            // during the call (slots, addresses, control buffers, each of the stated size).
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    MAX_BATCH as libc::c_uint,
                    flags | libc::MSG_WAITFORONE,
                    null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        };
        for (j, h) in hdrs.iter().enumerate().take(got) {
            let n = (h.msg_len as usize).min(SLOT);
            let src = source(&self.names[j], h.msg_hdr.msg_namelen as usize);
            let at = j * SLOT;
            let (start, ecn) = if self.ip_header {
                ipv4_payload(&self.data[at..at + n])
            } else {
                let ctrl = &self.ctrl[j];
                // SAFETY: the control buffer is CTRL plain bytes (u64s for alignment).
                let bytes = unsafe { std::slice::from_raw_parts(ctrl.as_ptr().cast(), CTRL) };
                (0, cmsg_ecn(&bytes[..h.msg_hdr.msg_controllen.min(CTRL)]))
            };
            self.push(Dgram {
                at: at + start,
                len: n - start,
                ecn,
                src,
            });
        }
        Ok(got)
    }

    /// Add one datagram: to the open run if it continues it (same source, same ECN field,
    /// the run's size, or shorter, which ends the run), else as a new run. An empty datagram
    /// is a run of its own (the loop counts it a `bad_header`).
    pub fn push(&mut self, d: Dgram) {
        let i = self.dgrams.len();
        self.dgrams.push(d);
        if let Some(r) = self.runs[self.next..].last_mut() {
            let head = &self.dgrams[r.first];
            if !r.closed
                && d.len != 0
                && d.len <= r.seg
                && head.src == d.src
                && head.ecn == d.ecn
                && r.bytes + d.len <= RUN_BUDGET
            {
                r.count += 1;
                r.bytes += d.len;
                r.closed = d.len < r.seg;
                return;
            }
        }
        self.runs.push(Run {
            first: i,
            count: 1,
            seg: d.len,
            bytes: d.len,
            closed: d.len == 0,
        });
    }

    /// Test and fuzz helper: a datagram with the given payload, as if received in slot `j`.
    pub fn push_payload(&mut self, j: usize, payload: &[u8], ecn: u8, src: Source) {
        let at = j * SLOT;
        self.data[at..at + payload.len()].copy_from_slice(payload);
        self.push(Dgram {
            at,
            len: payload.len(),
            ecn,
            src,
        });
    }

    /// Copy the next run's payloads into `out` (at least RUN_BUDGET bytes), back to back.
    pub fn take(&mut self, out: &mut [u8]) -> Option<Taken> {
        let r = *self.runs.get(self.next)?;
        self.next += 1;
        let mut n = 0usize;
        for d in &self.dgrams[r.first..r.first + r.count] {
            out[n..n + d.len].copy_from_slice(&self.data[d.at..d.at + d.len]);
            n += d.len;
        }
        let head = &self.dgrams[r.first];
        Some(Taken {
            n,
            seg: r.seg,
            ecn: head.ecn,
            src: head.src,
        })
    }
}

/// The source address the kernel wrote (IPv4 or IPv6; anything else reads as all zero).
fn source(name: &libc::sockaddr_storage, len: usize) -> Source {
    let p = name as *const libc::sockaddr_storage;
    match name.ss_family as i32 {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr; the
            // kernel wrote a sockaddr_in (family AF_INET, length checked).
            let s: libc::sockaddr_in = unsafe { read_unaligned(p.cast()) };
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&s.sin_addr.s_addr.to_ne_bytes());
            Source {
                v6: false,
                addr,
                scope: 0,
            }
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let s: libc::sockaddr_in6 = unsafe { read_unaligned(p.cast()) };
            Source {
                v6: true,
                addr: s.sin6_addr.s6_addr,
                scope: s.sin6_scope_id,
            }
        }
        _ => Source::default(),
    }
}

#[cfg(feature = "python")]
pub(crate) mod python {
    //! The Python face: `RawRx` (one per raw socket's receive loop) and `send_mmsg`.

    use std::sync::Mutex;

    use pyo3::buffer::PyBuffer;
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::PyBytes;

    use super::{send_segments, Dest, RecvBatch, MAX_BATCH, RUN_BUDGET};

    /// A buffer's memory, to be used inside `allow_threads` while its PyBuffer is held.
    #[derive(Clone, Copy)]
    pub(crate) struct Mem {
        pub(crate) ptr: *mut u8,
        pub(crate) len: usize,
    }

    // SAFETY: a Mem is made from a PyBuffer the calling function holds (so the object is
    // exported: alive and fixed in size) until it returns; it goes no further than that call.
    unsafe impl Send for Mem {}

    pub(crate) fn mem(b: &PyBuffer<u8>, writable: bool) -> PyResult<Mem> {
        if !b.is_c_contiguous() || (writable && b.readonly()) {
            return Err(PyValueError::new_err(
                "buffer must be contiguous and writable",
            ));
        }
        Ok(Mem {
            ptr: b.buf_ptr() as *mut u8,
            len: b.len_bytes(),
        })
    }

    fn os_error(e: i32) -> PyErr {
        // OSError(errno, text) picks the subclass (BlockingIOError for EAGAIN, ...).
        PyOSError::new_err((e, std::io::Error::from_raw_os_error(e).to_string()))
    }

    /// A raw socket's receive batches: `receive` hands out the next run, receiving a new
    /// batch (one recvmmsg) when none is left.
    #[pyclass(frozen, module = "tunseal_native")]
    pub struct RawRx(Mutex<RecvBatch>);

    impl RawRx {
        pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, RecvBatch> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    #[pymethods]
    impl RawRx {
        #[new]
        fn new(ip_header: bool) -> Self {
            RawRx(Mutex::new(RecvBatch::new(ip_header)))
        }

        /// The next run into `buf`: (n, seg, ecn, source address bytes, scope id).
        fn receive<'py>(
            &self,
            py: Python<'py>,
            fd: i32,
            buf: &Bound<'py, PyAny>,
            flags: i32,
        ) -> PyResult<(usize, usize, u8, Bound<'py, PyBytes>, u32)> {
            let b = PyBuffer::<u8>::get(buf)?;
            let m = mem(&b, true)?;
            if m.len < RUN_BUDGET {
                return Err(PyValueError::new_err("receive buffer too small"));
            }
            let r = py.allow_threads(move || {
                let m = m; // the whole Mem crosses (Send), not its raw fields
                let mut batch = self.0.lock().unwrap_or_else(|e| e.into_inner());
                if batch.pending() == 0 {
                    batch.recv(fd, flags).map_err(|e| e.raw_os_error())?;
                }
                // SAFETY: `buf` is exported for this call (held in `b`) and is the receive
                // loop's own: nothing else reads or writes it meanwhile.
                let out = unsafe { std::slice::from_raw_parts_mut(m.ptr, m.len) };
                batch.take(out).ok_or(Some(libc::EAGAIN))
            });
            match r {
                Ok(t) => Ok((
                    t.n,
                    t.seg,
                    t.ecn,
                    PyBytes::new(py, t.src.bytes()),
                    t.src.scope,
                )),
                Err(e) => Err(os_error(e.unwrap_or(libc::EIO))),
            }
        }

        /// Runs received and not yet handed out.
        #[getter]
        fn pending(&self) -> usize {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).pending()
        }
    }

    /// Send `buf` as datagrams of `seg` bytes to `addr` (4 or 16 bytes, `scope`), ECN field
    /// `ecn`, in one sendmmsg per 64: (sent, first errno or 0).
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    fn send_mmsg(
        py: Python<'_>,
        fd: i32,
        buf: &Bound<'_, PyAny>,
        seg: usize,
        addr: &[u8],
        scope: u32,
        ecn: u8,
        flags: i32,
    ) -> PyResult<(usize, i32)> {
        let dest = Dest::new(addr, scope)
            .ok_or_else(|| PyValueError::new_err("address must be 4 or 16 bytes"))?;
        let b = PyBuffer::<u8>::get(buf)?;
        let m = mem(&b, false)?;
        Ok(py.allow_threads(move || {
            let (m, dest) = (m, dest); // whole values cross (Send), not their fields
                                       // SAFETY: `buf` is exported for this call (held in `b`); only read.
            let data: &[u8] = if m.len == 0 {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(m.ptr, m.len) }
            };
            send_segments(fd, data, seg, &dest, ecn, flags)
        }))
    }

    pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<RawRx>()?;
        m.add_function(wrap_pyfunction!(send_mmsg, m)?)?;
        m.add("RAW_MAX_BATCH", MAX_BATCH)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(last: u8) -> Source {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, last]);
        Source {
            v6: false,
            addr,
            scope: 0,
        }
    }

    fn runs(b: &mut RecvBatch) -> Vec<(usize, usize, u8, u8)> {
        let mut out = vec![0u8; RUN_BUDGET];
        let mut v = Vec::new();
        while let Some(t) = b.take(&mut out) {
            v.push((t.n, t.seg, t.ecn, t.src.addr[3]));
        }
        v
    }

    #[test]
    fn runs_are_cut_like_gro_runs() {
        let mut b = RecvBatch::new(true);
        let sizes = [
            (100, 0, 1),
            (100, 0, 1),
            (60, 0, 1), // shorter: ends the run
            (100, 0, 1),
            (100, 2, 1), // another ECN field
            (100, 2, 2), // another source
            (0, 2, 2),   // empty: alone
            (100, 2, 2),
            (120, 2, 2), // longer: a new run
        ];
        for (j, &(n, ecn, s)) in sizes.iter().enumerate() {
            b.push_payload(j, &vec![j as u8; n], ecn, src(s));
        }
        assert_eq!(
            runs(&mut b),
            vec![
                (260, 100, 0, 1),
                (100, 100, 0, 1),
                (100, 100, 2, 1),
                (100, 100, 2, 2),
                (0, 0, 2, 2),
                (100, 100, 2, 2),
                (120, 120, 2, 2),
            ]
        );
    }

    #[test]
    fn a_run_stays_within_the_budget_and_keeps_the_bytes() {
        let mut b = RecvBatch::new(true);
        for j in 0..MAX_BATCH {
            b.push_payload(j, &[j as u8; 1500], 0, src(1));
        }
        let mut out = vec![0u8; RUN_BUDGET];
        let t = b.take(&mut out).unwrap();
        assert_eq!((t.n, t.seg), (43 * 1500, 1500));
        for (k, d) in out[..t.n].chunks(1500).enumerate() {
            assert!(d.iter().all(|&x| x == k as u8));
        }
        assert_eq!(b.take(&mut out).unwrap().n, 21 * 1500);
        assert!(b.take(&mut out).is_none());
    }

    #[test]
    fn ipv4_header_is_stripped_as_the_pure_path_does() {
        assert_eq!(ipv4_payload(&[]), (0, 0));
        assert_eq!(ipv4_payload(&[0x45]), (1, 0));
        assert_eq!(ipv4_payload(&[0x4f, 0x03, 0, 0]), (4, 3));
        let mut p = vec![0u8; 30];
        p[0] = 0x46;
        p[1] = 0xb9;
        assert_eq!(ipv4_payload(&p), (24, 1));
    }

    #[test]
    fn control_messages_give_the_ecn_field() {
        let hl = size_of::<libc::cmsghdr>();
        let mut c = vec![0u8; 2 * (hl + 8)];
        let put = |c: &mut [u8], at: usize, level: i32, kind: i32, v: u8| {
            let h = libc::cmsghdr {
                cmsg_len: hl + 4,
                cmsg_level: level,
                cmsg_type: kind,
            };
            // SAFETY: test: `c` has room for the header at `at`.
            unsafe { std::ptr::write_unaligned(c[at..].as_mut_ptr().cast(), h) };
            c[at + hl] = v;
        };
        put(&mut c, 0, 99, 1, 3);
        put(&mut c, hl + 8, SOL_IPV6, IPV6_TCLASS, 0xb6);
        assert_eq!(cmsg_ecn(&c), 2);
        assert_eq!(cmsg_ecn(&c[..hl + 8]), 0);
        assert_eq!(cmsg_ecn(&c[..5]), 0);
        let mut bad = c.clone();
        bad[0] = 0xff; // a length past the buffer: stop, no panic
        assert_eq!(cmsg_ecn(&bad), 0);
    }

    /// sendmmsg and recvmmsg for real, over loopback UDP (no root needed): the same datagrams
    /// arrive, with their source and the ECN field asked for.
    #[test]
    fn sends_and_receives_over_loopback() {
        use std::net::UdpSocket;
        use std::os::fd::AsRawFd;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one int from a live local.
        let r = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                SOL_IP,
                13, // IP_RECVTOS
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let port = rx.local_addr().unwrap().port();
        let buf: Vec<u8> = (0..(100 * 30 + 7)).map(|i| i as u8).collect();
        let mut dest = Dest::new(&[127, 0, 0, 1], 0).unwrap();
        if let Dest::V4(s) = &mut dest {
            s.sin_port = port.to_be();
        }
        let (sent, err) = send_segments(tx.as_raw_fd(), &buf, 100, &dest, 2, 0);
        assert_eq!((sent, err), (31, 0));
        let mut b = RecvBatch::new(false);
        // loopback delivers during the send: all 31 are queued, one recvmmsg takes them
        assert_eq!(b.recv(rx.as_raw_fd(), 0).unwrap(), 31);
        let mut out = vec![0u8; RUN_BUDGET];
        let t = b.take(&mut out).unwrap();
        assert_eq!((t.n, t.seg, t.ecn), (buf.len(), 100, 2));
        assert_eq!(&out[..t.n], &buf[..]);
        assert_eq!(t.src.bytes(), &[127, 0, 0, 1]);
        // a closed descriptor: every datagram tried once, the error reported
        assert_eq!(send_segments(-1, &buf, 100, &dest, 0, 0), (0, libc::EBADF));
        assert_eq!(b.recv(-1, 0).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }
}
