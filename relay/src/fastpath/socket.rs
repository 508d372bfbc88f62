//! The fast path's UDP socket: one `SO_REUSEPORT` socket per worker thread, batched
//! `recvmmsg`/`sendmmsg` over preallocated buffers, and UDP GRO/GSO with a fallback.
//!
//! Owns the syscalls and their buffers: a [`RecvBatch`] holds the receive buffers, their
//! source addresses and control buffers, and presents what was received as *logical*
//! datagrams (one per UDP datagram the sender sent, whether or not the kernel coalesced them);
//! a [`SendBatch`] names which logical datagrams go to which address and sends them straight
//! from the receive buffers (the same bytes, no copy, no allocation, no lock and no log line
//! per packet). It does not decide anything about packets (that is `table`) and does not loop
//! or count (that is `worker`). Linux only.
//!
//! GRO/GSO: [`Offload::probe`] asks the kernel once, at start, whether `UDP_GRO` and
//! `UDP_SEGMENT` can be set on a UDP socket; the caller logs [`Offload::describe`].
//! [`FastPathSocket::bind_with`] takes the offload to use (so a caller or a test can force the
//! fallback) and [`FastPathSocket::offload`] says what the socket actually uses.
//! * Receive (GRO): the socket sets `UDP_GRO`, so the kernel may hand one buffer holding
//!   several same-flow datagrams of one size (the last may be shorter) plus a `UDP_GRO` cmsg
//!   with that size. Each message then needs a slot for a whole coalesced buffer (64 KiB):
//!   `batch` (at most 64) slots of 64 KiB, 4 MiB of address space per worker, allocated
//!   zeroed, so only the pages the kernel writes become resident (about one page per slot
//!   for small datagrams). Fewer, larger slots were tried first (16 per call): most senders
//!   do not use GSO, so their datagrams arrive one per message and a burst the C baseline
//!   reads in one call took up to four (a third more syscalls, 1.25-1.5x its CPU per packet
//!   at one pair, 160 B). The logical datagrams per call
//!   stay at most `batch` (the worker's `SendBatch` has `batch` entries); segments beyond that
//!   are kept and returned by the next call without a syscall. Segment boundaries go into
//!   preallocated index arrays. Without GRO: `batch` slots of `slot` bytes, one datagram each.
//! * Send (GSO): a run of consecutive queued datagrams to the same address with the same
//!   length (the last may be shorter), up to 64 segments, 65507 bytes and segments of at most
//!   1452 bytes (so a segment fits a 1500-byte path MTU; the kernel refuses a segment larger
//!   than the path MTU instead of fragmenting it), goes out as one `mmsghdr` whose iovecs are
//!   the segments in the receive buffers, with a `UDP_SEGMENT` cmsg. Such runs are what GRO
//!   hands over (one flow, one size) and what a video frame split into equal packets looks
//!   like, so one message replaces up to 64. A lone datagram goes out plainly. If the kernel
//!   refuses a segmented send (`EIO`: no checksum offload on the route; `EINVAL`,
//!   `EOPNOTSUPP`, ...), GSO is turned off for this socket for good
//!   ([`FastPathSocket::gso_fell_back`] tells, nothing is logged per packet) and that run and
//!   the rest of the batch are resent one datagram per message; the counts stay exact in
//!   datagrams.
//!
//! A datagram longer than the `slot` a [`RecvBatch`] was made with is presented as empty (so
//! the table drops it) in both modes.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Largest UDP payload over IPv4; no GSO send is larger.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// One GRO receive slot: room for any coalesced buffer (a UDP payload is below 64 KiB).
const GRO_SLOT: usize = 1 << 16;
/// Most GRO slots (messages) per receive batch: 64 x 64 KiB = 4 MiB of address space.
const GRO_SLOTS_MAX: usize = 64;
/// Most segments per GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Largest segment sent with GSO: 1500 - 40 (IPv6) - 8 (UDP), so it fits a common path MTU.
const GSO_MAX_SEGMENT: usize = 1452;

/// A control buffer for one message, aligned for `cmsghdr`: room for a few int-sized cmsgs
/// (one `UDP_GRO` or `UDP_SEGMENT` needs `CMSG_SPACE(4)` = 24 bytes).
type Ctrl = [u64; 8];

/// What the kernel offers (from [`Offload::probe`]) or what a socket uses
/// (from [`FastPathSocket::offload`]) for UDP segmentation offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// Receive coalescing (`UDP_GRO`).
    pub gro: bool,
    /// Send segmentation (`UDP_SEGMENT` cmsg).
    pub gso: bool,
}

impl Offload {
    /// Probes on a throwaway socket; any failure reads as "absent", and the socket then uses
    /// the fallback (one datagram per `recvmmsg`/`sendmmsg` entry).
    pub fn probe() -> Self {
        let Ok(s) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) else {
            return Self {
                gro: false,
                gso: false,
            };
        };
        let gro = set_int(&s, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let gso = set_int(&s, libc::SOL_UDP, libc::UDP_SEGMENT, 1200).is_ok();
        Self { gro, gso }
    }

    /// One line for the start-up log, saying what is used.
    pub fn describe(self) -> String {
        let gro = if self.gro {
            "UDP GRO used (coalesced receives split per datagram)"
        } else {
            "UDP GRO not used (one datagram per receive slot)"
        };
        let gso = if self.gso {
            "UDP GSO used (same-peer same-size runs sent as one segmented message)"
        } else {
            "UDP GSO not used (one datagram per send entry)"
        };
        format!("fast path uses recvmmsg/sendmmsg; {gro}; {gso}")
    }
}

fn set_int(s: &Socket, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` is a live c_int and the length passed is its size; the fd is owned by `s`.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a `sockaddr_storage` filled by the kernel.
fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is
            // larger and at least as aligned as any sockaddr type.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `ss`; returns the length to hand the kernel.
fn std_to_sockaddr(addr: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger and at least as aligned as sockaddr_in,
            // and every bit pattern is valid for both plain C structs.
            let sin =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn zeroed_vec<T>(n: usize) -> Vec<T> {
    (0..n)
        // SAFETY: only used for plain C structs (sockaddr_storage, iovec, mmsghdr) for which
        // all-zero bytes (null pointers, zero lengths) is a valid value.
        .map(|_| unsafe { mem::zeroed::<T>() })
        .collect()
}

/// Reads the `UDP_GRO` segment size from a received message's control data (0 when absent).
fn gro_size(h: &libc::msghdr) -> usize {
    // SAFETY: `h` was filled by recvmmsg: msg_control/msg_controllen describe our own control
    // buffer and the kernel wrote well-formed cmsghdrs into it; the CMSG_* helpers stay
    // inside msg_controllen, and the data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// Preallocated receive buffers for one `recvmmsg`, and the logical datagrams of the last
/// receive (segments of coalesced buffers under GRO). Follows one socket.
pub struct RecvBatch {
    /// `max(batch * slot, gro_slots * 64 KiB)` bytes: the fallback and the GRO layout share it.
    bufs: Vec<u8>,
    /// Fallback slot size, and the longest datagram presented (longer ones read as empty).
    slot: usize,
    /// Logical datagrams per call, and messages per call in the fallback layout.
    batch: usize,
    /// Messages per call in the GRO layout.
    gro_slots: usize,
    // Per message (`batch` entries).
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    ctrl: Vec<Ctrl>,
    /// Bytes received in message m (0 when truncated).
    msg_len: Vec<usize>,
    /// GRO segment size of message m (0: one datagram).
    msg_seg: Vec<usize>,
    /// Messages of the last syscall, their slot stride, and the first not fully presented.
    msgs: usize,
    stride: usize,
    next_msg: usize,
    next_off: usize,
    // Per logical datagram (`batch` entries): where it is and which message it came from.
    offs: Vec<usize>,
    lens: Vec<usize>,
    srcs: Vec<usize>,
    n: usize,
}

impl RecvBatch {
    /// Up to `batch` datagrams per call, each up to `slot` bytes (larger ones read as empty).
    pub fn new(batch: usize, slot: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        let slot = slot.clamp(1, GRO_SLOT);
        let gro_slots = batch.clamp(1, GRO_SLOTS_MAX);
        Self {
            // Zeroed (calloc): untouched pages of the layout not in use cost no memory.
            bufs: vec![0u8; (batch * slot).max(gro_slots * GRO_SLOT)],
            slot,
            batch,
            gro_slots,
            addrs: zeroed_vec(batch),
            iovs: zeroed_vec(batch),
            hdrs: zeroed_vec(batch),
            ctrl: vec![[0u64; 8]; batch],
            msg_len: vec![0; batch],
            msg_seg: vec![0; batch],
            msgs: 0,
            stride: slot,
            next_msg: 0,
            next_off: 0,
            offs: vec![0; batch],
            lens: vec![0; batch],
            srcs: vec![0; batch],
            n: 0,
        }
    }

    /// Logical datagrams in the last receive.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Messages the kernel returned in the last `recvmmsg` (fewer than the datagrams they
    /// hold when GRO coalesced some).
    pub fn messages(&self) -> usize {
        self.msgs
    }

    /// The `i`th logical datagram of the last receive and its source (`None` for a non-IP
    /// source).
    #[inline]
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (self.data(i), sockaddr_to_std(&self.addrs[self.srcs[i]]))
    }

    #[inline]
    fn data(&self, i: usize) -> &[u8] {
        let off = self.offs[i];
        &self.bufs[off..off + self.lens[i]]
    }

    /// Presents up to `batch` logical datagrams from the received messages, resuming where the
    /// previous call stopped.
    fn present(&mut self) {
        self.n = 0;
        while self.next_msg < self.msgs && self.n < self.batch {
            let m = self.next_msg;
            let base = m * self.stride;
            let len = self.msg_len[m];
            if len == 0 {
                self.push_logical(base, 0, m);
                self.next_msg += 1;
                continue;
            }
            let seg = match self.msg_seg[m] {
                0 => len,
                s => s,
            };
            while self.next_off < len && self.n < self.batch {
                let l = seg.min(len - self.next_off);
                let l = if l > self.slot { 0 } else { l };
                self.push_logical(base + self.next_off, l, m);
                self.next_off += seg;
            }
            if self.next_off >= len {
                self.next_msg += 1;
                self.next_off = 0;
            }
        }
    }

    #[inline]
    fn push_logical(&mut self, off: usize, len: usize, msg: usize) {
        self.offs[self.n] = off;
        self.lens[self.n] = len;
        self.srcs[self.n] = msg;
        self.n += 1;
    }
}

/// Preallocated send descriptors for one `sendmmsg`: which received datagrams go where, and
/// the messages (plain or GSO runs) they are grouped into.
pub struct SendBatch {
    // Per queued datagram.
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    dests: Vec<SocketAddr>,
    slots: Vec<usize>,
    iovs: Vec<libc::iovec>,
    // Per message.
    hdrs: Vec<libc::mmsghdr>,
    ctrl: Vec<Ctrl>,
    first: Vec<usize>,
    count: Vec<usize>,
    n: usize,
    last_messages: usize,
}

impl SendBatch {
    pub fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        Self {
            addrs: zeroed_vec(batch),
            addr_lens: vec![0; batch],
            dests: vec![unspecified; batch],
            slots: vec![0; batch],
            iovs: zeroed_vec(batch),
            hdrs: zeroed_vec(batch),
            ctrl: vec![[0u64; 8]; batch],
            first: vec![0; batch],
            count: vec![0; batch],
            n: 0,
            last_messages: 0,
        }
    }

    pub fn clear(&mut self) {
        self.n = 0;
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Messages the last [`FastPathSocket::send_batch`] built (fewer than the datagrams when
    /// GSO grouped runs; counts the final grouping if GSO fell back mid-batch).
    pub fn last_messages(&self) -> usize {
        self.last_messages
    }

    /// Queues logical datagram `slot` of the last receive to `to`; false when the batch is
    /// full.
    #[inline]
    pub fn push(&mut self, slot: usize, to: SocketAddr) -> bool {
        if self.n == self.slots.len() {
            return false;
        }
        self.slots[self.n] = slot;
        self.dests[self.n] = to;
        self.addr_lens[self.n] = std_to_sockaddr(to, &mut self.addrs[self.n]);
        self.n += 1;
        true
    }

    /// Groups queued datagrams `from..n` into messages starting at message `msg`, GSO runs
    /// when `gso`; returns the total message count. `iovs` must be filled.
    fn build(&mut self, mut msg: usize, from: usize, gso: bool) -> usize {
        let n = self.n;
        let mut i = from;
        while i < n {
            let len = self.iovs[i].iov_len;
            let mut j = i + 1;
            if gso && len > 0 && len <= GSO_MAX_SEGMENT {
                let mut total = len;
                while j < n && j - i < GSO_MAX_SEGMENTS && self.dests[j] == self.dests[i] {
                    let l = self.iovs[j].iov_len;
                    if l == 0 || l > len || total + l > MAX_UDP_PAYLOAD {
                        break;
                    }
                    total += l;
                    j += 1;
                    if l < len {
                        break; // a shorter datagram ends the run
                    }
                }
            }
            let h = &mut self.hdrs[msg].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.addr_lens[i];
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = (j - i) as _;
            h.msg_flags = 0;
            if j - i > 1 {
                let c = &mut self.ctrl[msg];
                h.msg_control = c.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: the control buffer is 64 bytes, aligned for cmsghdr, and larger
                // than CMSG_SPACE(2), so the first header and its 2 data bytes fit.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(h);
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = libc::UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), len as u16);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            self.hdrs[msg].msg_len = 0;
            self.first[msg] = i;
            self.count[msg] = j - i;
            msg += 1;
            i = j;
        }
        msg
    }
}

/// Whether a refused segmented send means "this socket/route cannot do GSO".
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT | libc::EMSGSIZE)
    )
}

/// One worker's UDP socket.
#[derive(Debug)]
pub struct FastPathSocket {
    socket: Socket,
    gro: bool,
    gso_requested: bool,
    /// Cleared for good when the kernel refuses a segmented send.
    gso: AtomicBool,
}

impl FastPathSocket {
    /// Binds with what [`Offload::probe`] reports; see [`FastPathSocket::bind_with`].
    pub fn bind(addr: SocketAddr, read_timeout: Duration) -> io::Result<Self> {
        Self::bind_with(addr, read_timeout, Offload::probe())
    }

    /// Binds a UDP socket on `addr` with `SO_REUSEPORT` (so each worker binds its own on the
    /// same port and the kernel spreads flows by 4-tuple), blocking with `read_timeout` so a
    /// worker can notice its stop flag, using GRO/GSO only where `offload` allows (pass
    /// `Offload { gro: false, gso: false }` to force the fallback). `UDP_GRO` is set here (if
    /// the kernel refuses, GRO is simply not used); GSO is per message, never a socket option
    /// (that would segment every send).
    pub fn bind_with(
        addr: SocketAddr,
        read_timeout: Duration,
        offload: Offload,
    ) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        // Best effort: larger buffers absorb bursts; the kernel caps them at rmem_max/wmem_max.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        socket.set_read_timeout(Some(read_timeout.max(Duration::from_millis(1))))?;
        socket.set_write_timeout(Some(Duration::from_millis(100)))?;
        let gro = offload.gro && set_int(&socket, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        socket.bind(&addr.into())?;
        Ok(Self {
            socket,
            gro,
            gso_requested: offload.gso,
            gso: AtomicBool::new(offload.gso),
        })
    }

    /// What this socket uses now (GSO reads false once the kernel refused it).
    pub fn offload(&self) -> Offload {
        Offload {
            gro: self.gro,
            gso: self.gso.load(Ordering::Relaxed),
        }
    }

    /// True once GSO was asked for but the kernel refused a segmented send, so this socket
    /// went back to one datagram per message (the caller may log it once).
    pub fn gso_fell_back(&self) -> bool {
        self.gso_requested && !self.gso.load(Ordering::Relaxed)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Returns the next logical datagrams into `rx`: those left over from the previous call if
    /// any (no syscall), else from one `recvmmsg` (`MSG_WAITFORONE`: blocks for the first
    /// datagram up to the read timeout, then takes what is queued). Returns how many (at
    /// most `rx`'s batch); a timeout is `ErrorKind::WouldBlock`/`TimedOut`.
    pub fn recv_batch(&self, rx: &mut RecvBatch) -> io::Result<usize> {
        rx.n = 0;
        if rx.next_msg < rx.msgs {
            rx.present();
            return Ok(rx.n);
        }
        rx.msgs = 0;
        let (cap, stride) = if self.gro {
            (rx.gro_slots, GRO_SLOT)
        } else {
            (rx.batch, rx.slot)
        };
        let base = rx.bufs.as_mut_ptr();
        for i in 0..cap {
            // SAFETY: cap * stride <= bufs.len() for both layouts by construction, so the
            // slot stays inside the buffer.
            let p = unsafe { base.add(i * stride) };
            rx.iovs[i] = libc::iovec {
                iov_base: p.cast(),
                iov_len: stride,
            };
            let h = &mut rx.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut rx.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut rx.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if self.gro {
                h.msg_hdr.msg_control = rx.ctrl[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = mem::size_of::<Ctrl>() as _;
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every mmsghdr points at a live iovec, buffer slot, sockaddr_storage and
        // control buffer owned by `rx`, which is exclusively borrowed for the call; `cap` is
        // at most the arrays' length.
        let rc = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                rx.hdrs.as_mut_ptr(),
                cap as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = rc as usize;
        for i in 0..n {
            let h = &rx.hdrs[i];
            let flags = h.msg_hdr.msg_flags;
            // A datagram larger than its slot was cut, and a cut control buffer hides the
            // segment size: present it as empty so it is dropped.
            let cut = flags & libc::MSG_TRUNC != 0 || (self.gro && flags & libc::MSG_CTRUNC != 0);
            rx.msg_len[i] = if cut {
                0
            } else {
                (h.msg_len as usize).min(stride)
            };
            rx.msg_seg[i] = if self.gro && !cut {
                gro_size(&h.msg_hdr)
            } else {
                0
            };
        }
        rx.msgs = n;
        rx.stride = stride;
        rx.next_msg = 0;
        rx.next_off = 0;
        rx.present();
        Ok(rx.n)
    }

    /// Sends every queued datagram of `tx` from `rx`'s buffers with `sendmmsg` (GSO runs as
    /// one message each when GSO is on), resuming after partial sends and skipping a message
    /// the kernel refuses. Returns (sent, failed) in datagrams. `tx` must have been filled
    /// from this `rx` receive.
    pub fn send_batch(&self, tx: &mut SendBatch, rx: &RecvBatch) -> (usize, usize) {
        let n = tx.n;
        for i in 0..n {
            let data = rx.data(tx.slots[i]);
            tx.iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
        }
        let mut m = tx.build(0, 0, self.gso.load(Ordering::Relaxed));
        let (mut sent, mut failed, mut at) = (0, 0, 0);
        while at < m {
            // SAFETY: hdrs[at..m] point at live iovecs, addresses and control buffers in `tx`
            // and at data in `rx`, both borrowed for the whole call; the kernel only reads
            // them.
            let rc = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    tx.hdrs.as_mut_ptr().add(at),
                    (m - at) as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                let rc = rc as usize;
                sent += tx.count[at..at + rc].iter().sum::<usize>();
                at += rc;
                continue;
            }
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if tx.count[at] > 1 && gso_refused(&e) {
                    // No GSO here: off for good, and the rest goes one datagram per message.
                    self.gso.store(false, Ordering::Relaxed);
                    m = tx.build(at, tx.first[at], false);
                    continue;
                }
            }
            // The first remaining message was refused: skip its datagrams.
            failed += tx.count[at];
            at += 1;
        }
        tx.last_messages = m;
        tx.n = 0;
        (sent, failed)
    }
    /// Another handle on the same socket (same port, same SO_REUSEPORT member), for sending
    /// from outside the worker: the QUIC path's bridge to fast-path endpoints.
    /// The clone sends one plain datagram at a time (no segmentation) and never receives.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            gro: false,
            gso_requested: false,
            gso: AtomicBool::new(false),
        })
    }

    /// Sends one datagram without blocking (a full send buffer is an error, not a wait):
    /// callers are async tasks that must never stall on a worker's socket.
    pub fn send_to_now(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket
            .send_to_with_flags(datagram, &to.into(), libc::MSG_DONTWAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn sockaddr_roundtrip() {
        for a in ["127.0.0.1:5", "[::1]:7", "[2001:db8::1]:65535", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut ss: libc::sockaddr_storage = zeroed_vec(1).pop().unwrap();
            std_to_sockaddr(a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss), Some(a));
        }
    }

    #[test]
    fn probe_reports_offload() {
        let o = Offload::probe();
        assert!(o.describe().contains("GRO"));
    }

    #[test]
    fn batches_over_loopback() {
        let s = FastPathSocket::bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(500))
            .unwrap();
        let at = s.local_addr().unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for i in 0..5u8 {
            c.send_to(&[i; 100], at).unwrap();
        }
        c.send_to(&[9u8; 3000], at).unwrap(); // larger than a slot
        let mut rx = RecvBatch::new(8, 2048);
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = s.recv_batch(&mut rx).unwrap();
            for i in 0..n {
                let (d, from) = rx.get(i);
                assert_eq!(from, Some(c.local_addr().unwrap()));
                got.push(d.to_vec());
            }
        }
        assert_eq!(got[4], vec![4u8; 100]);
        assert!(got[5].is_empty(), "truncated datagram presented as empty");
        // Echo the first received batch's slots back from the receive buffers.
        let mut tx = SendBatch::new(8);
        assert!(tx.push(0, c.local_addr().unwrap()));
        assert_eq!(s.send_batch(&mut tx, &rx).1, 0);
        let mut buf = [0u8; 4096];
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], rx.get(0).0);
    }

    fn client() -> UdpSocket {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = socket2::SockRef::from(&c).set_recv_buffer_size(1 << 20);
        c
    }

    fn bind_local(offload: Offload) -> FastPathSocket {
        FastPathSocket::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_millis(500),
            offload,
        )
        .unwrap()
    }

    /// Sends `data` as one `sendmsg` with a `UDP_SEGMENT` cmsg of `seg` bytes.
    fn gso_send(c: &UdpSocket, to: SocketAddr, data: &[u8], seg: u16) {
        let mut ss: libc::sockaddr_storage = zeroed_vec(1).pop().unwrap();
        let namelen = std_to_sockaddr(to, &mut ss);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut ctrl: Ctrl = [0; 8];
        let mut h: libc::msghdr = zeroed_vec(1).pop().unwrap();
        h.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = ctrl.as_mut_ptr().cast();
        // SAFETY: test code; the control buffer is aligned and larger than CMSG_SPACE(2), and
        // every pointer in `h` is live for the call.
        let rc = unsafe {
            h.msg_controllen = libc::CMSG_SPACE(2) as _;
            let cm = libc::CMSG_FIRSTHDR(&h);
            (*cm).cmsg_level = libc::SOL_UDP;
            (*cm).cmsg_type = libc::UDP_SEGMENT;
            (*cm).cmsg_len = libc::CMSG_LEN(2) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg);
            libc::sendmsg(c.as_raw_fd(), &h, 0)
        };
        assert_eq!(rc, data.len() as isize, "{}", io::Error::last_os_error());
    }

    type Received = (Vec<u8>, Option<SocketAddr>);

    /// Receives `want` logical datagrams; returns them and the messages of each syscall.
    fn recv_logical(
        s: &FastPathSocket,
        rx: &mut RecvBatch,
        want: usize,
    ) -> (Vec<Received>, Vec<usize>) {
        let (mut got, mut calls) = (Vec::new(), Vec::new());
        while got.len() < want {
            let n = s.recv_batch(rx).unwrap();
            calls.push(rx.messages());
            for i in 0..n {
                let (d, from) = rx.get(i);
                got.push((d.to_vec(), from));
            }
        }
        (got, calls)
    }

    fn drain(c: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 1 << 16];
        (0..want)
            .map(|_| {
                let (n, _) = c.recv_from(&mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect()
    }

    fn assert_quiet(c: &UdpSocket) {
        c.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let mut buf = [0u8; 2048];
        assert!(c.recv_from(&mut buf).is_err(), "unexpected extra datagram");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }

    fn pattern(tag: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|j| tag.wrapping_mul(31).wrapping_add(j as u8))
            .collect()
    }

    #[test]
    fn describe_says_what_is_used() {
        let on = Offload {
            gro: true,
            gso: true,
        }
        .describe();
        let off = Offload {
            gro: false,
            gso: false,
        }
        .describe();
        assert!(on.contains("GRO used") && on.contains("GSO used"), "{on}");
        assert!(
            off.contains("GRO not used") && off.contains("GSO not used"),
            "{off}"
        );
        let s = bind_local(Offload {
            gro: false,
            gso: false,
        });
        assert_eq!(
            s.offload(),
            Offload {
                gro: false,
                gso: false
            }
        );
        assert!(!s.gso_fell_back());
    }

    #[test]
    fn present_splits_segments_and_carries_over() {
        // Two messages as the kernel would leave them: 10 x 200 + 50 coalesced, then 30 alone.
        let mut rx = RecvBatch::new(4, 2048);
        rx.stride = GRO_SLOT;
        rx.msgs = 2;
        rx.msg_len[0] = 2050;
        rx.msg_seg[0] = 200;
        rx.msg_len[1] = 30;
        rx.msg_seg[1] = 0;
        let mut seen = Vec::new();
        while rx.next_msg < rx.msgs {
            rx.present();
            assert!(rx.len() <= 4);
            for i in 0..rx.len() {
                seen.push((rx.offs[i], rx.lens[i], rx.srcs[i]));
            }
        }
        let mut want: Vec<_> = (0..10).map(|k| (k * 200, 200, 0)).collect();
        want.push((2000, 50, 0));
        want.push((GRO_SLOT, 30, 1));
        assert_eq!(seen, want);
        // Segments longer than the slot read as empty; a cut message as one empty datagram.
        let mut rx = RecvBatch::new(8, 100);
        rx.stride = GRO_SLOT;
        rx.msgs = 2;
        (rx.msg_len[0], rx.msg_seg[0]) = (250, 120);
        (rx.msg_len[1], rx.msg_seg[1]) = (0, 0);
        rx.present();
        let lens: Vec<_> = (0..rx.len()).map(|i| rx.lens[i]).collect();
        assert_eq!(lens, vec![0, 0, 10, 0]);
    }

    /// A client's own GSO send (10 x 200 + 50 in one sendmsg) arrives as 11 logical datagrams
    /// with exact bytes and the client's source, with GRO (split path) and without (the kernel
    /// segments it), and across calls when the batch is smaller than the coalesced buffer.
    #[test]
    fn gro_receive_splits_a_segmented_send() {
        let mut data = Vec::new();
        for k in 0..10u8 {
            data.extend(pattern(k, 200));
        }
        data.extend(pattern(10, 50));
        let want: Vec<Vec<u8>> = data.chunks(200).map(<[u8]>::to_vec).collect();
        assert_eq!(want.len(), 11);
        for (offload, batch) in [
            (Offload::probe(), 64),
            (Offload::probe(), 4),
            (
                Offload {
                    gro: false,
                    gso: false,
                },
                64,
            ),
        ] {
            let s = bind_local(offload);
            let c = client();
            gso_send(&c, s.local_addr().unwrap(), &data, 200);
            let mut rx = RecvBatch::new(batch, 2048);
            let (got, calls) = recv_logical(&s, &mut rx, 11);
            assert_eq!(got.len(), 11);
            for (k, (d, from)) in got.iter().enumerate() {
                assert_eq!(d, &want[k], "datagram {k}");
                assert_eq!(*from, Some(c.local_addr().unwrap()));
            }
            if s.offload().gro {
                // Loopback keeps a GSO skb whole for a UDP_GRO socket: one message, split
                // here, and carried over without a syscall when the batch is smaller.
                eprintln!("GRO on: messages per call {calls:?}");
                assert_eq!(calls[0], 1, "GRO coalesced the send into one message");
                assert!(calls.iter().all(|&m| m == 1));
            } else {
                assert_eq!(
                    calls.iter().sum::<usize>(),
                    11,
                    "fallback: one message each"
                );
            }
        }
    }

    /// Forwards `items` (received datagrams tagged with their destination index) through `s`
    /// and checks every destination gets exactly its datagrams, in order. Returns
    /// (datagrams pushed, messages used) summed over the send batches.
    fn forward_through(s: &FastPathSocket, items: &[(usize, Vec<u8>)]) -> (usize, usize) {
        let src = client();
        let dests = [client(), client()];
        let to: Vec<SocketAddr> = dests.iter().map(|d| d.local_addr().unwrap()).collect();
        let at = s.local_addr().unwrap();
        for (d, body) in items {
            let mut p = vec![*d as u8];
            p.extend_from_slice(body);
            src.send_to(&p, at).unwrap();
        }
        let mut rx = RecvBatch::new(64, 2048);
        let mut tx = SendBatch::new(64);
        let (mut pushed, mut msgs, mut seen) = (0, 0, 0);
        while seen < items.len() {
            let n = s.recv_batch(&mut rx).unwrap();
            for i in 0..n {
                let (d, _) = rx.get(i);
                assert!(tx.push(i, to[d[0] as usize]));
            }
            seen += n;
            let pushing = tx.len();
            assert_eq!(s.send_batch(&mut tx, &rx), (pushing, 0));
            pushed += pushing;
            msgs += tx.last_messages();
        }
        for (k, dest) in dests.iter().enumerate() {
            let want: Vec<Vec<u8>> = items
                .iter()
                .filter(|(d, _)| *d == k)
                .map(|(d, b)| {
                    let mut p = vec![*d as u8];
                    p.extend_from_slice(b);
                    p
                })
                .collect();
            assert_eq!(drain(dest, want.len()), want, "destination {k}");
            assert_quiet(dest);
        }
        (pushed, msgs)
    }

    fn run_of_twenty_and_three_others() -> Vec<(usize, Vec<u8>)> {
        let mut items: Vec<_> = (0..20u8).map(|k| (0, pattern(k, 300))).collect();
        items.extend((0..3u8).map(|k| (1, pattern(100 + k, 120))));
        items
    }

    #[test]
    fn gso_send_arrives_as_separate_datagrams() {
        let s = bind_local(Offload::probe());
        let (pushed, msgs) = forward_through(&s, &run_of_twenty_and_three_others());
        assert_eq!(pushed, 23);
        if s.offload().gso {
            assert!(
                msgs < pushed,
                "GSO grouped runs: {msgs} messages for {pushed}"
            );
        }
        assert!(!s.gso_fell_back());
    }

    #[test]
    fn fallback_without_offload_forwards_the_same() {
        let s = bind_local(Offload {
            gro: false,
            gso: false,
        });
        assert_eq!(
            s.offload(),
            Offload {
                gro: false,
                gso: false
            }
        );
        let (pushed, msgs) = forward_through(&s, &run_of_twenty_and_three_others());
        assert_eq!((pushed, msgs), (23, 23));
    }

    /// Runs split where the length grows, after a shorter datagram, at a destination change,
    /// at 64 segments and at 65507 bytes; zero-length and over-long datagrams go plainly.
    #[test]
    fn gso_runs_split_on_length_destination_and_limits() {
        let lens = [300usize, 300, 100, 50, 0, 400, 1400, 1500, 100];
        let mut cases: Vec<(Vec<(usize, usize)>, usize)> = vec![
            (vec![(0, 0), (1, 0), (0, 0), (2, 0)], 1),
            (vec![(1, 0), (0, 0), (3, 0), (3, 0)], 2),
            (vec![(4, 0), (0, 0)], 2),
            (vec![(5, 0), (5, 0), (5, 1), (5, 0), (2, 0), (2, 0)], 4),
            (vec![(2, 0), (5, 0), (5, 0)], 2), // a longer datagram starts a new run
            (vec![(7, 0), (7, 0)], 2),
            ((0..70).map(|_| (8, 0)).collect(), 2),
        ];
        let mut big: Vec<_> = (0..50).map(|_| (6, 0)).collect();
        big.push((8, 1));
        cases.push((big, 3)); // 46 x 1400 = 64400 <= 65507, then 4, then the other peer
        for offload in [
            Offload {
                gro: false,
                gso: Offload::probe().gso,
            },
            Offload {
                gro: false,
                gso: false,
            },
        ] {
            let s = bind_local(offload);
            let src = client();
            let dests = [client(), client()];
            let to: Vec<SocketAddr> = dests.iter().map(|d| d.local_addr().unwrap()).collect();
            for (k, &len) in lens.iter().enumerate() {
                src.send_to(&pattern(k as u8, len), s.local_addr().unwrap())
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
            let mut rx = RecvBatch::new(64, 2048);
            assert_eq!(s.recv_batch(&mut rx).unwrap(), lens.len(), "one receive");
            let mut tx = SendBatch::new(128);
            for (pushes, gso_msgs) in &cases {
                for &(i, d) in pushes {
                    assert!(tx.push(i, to[d]));
                }
                assert_eq!(s.send_batch(&mut tx, &rx), (pushes.len(), 0));
                let want_msgs = if s.offload().gso {
                    *gso_msgs
                } else {
                    pushes.len()
                };
                assert_eq!(tx.last_messages(), want_msgs, "{pushes:?}");
                for (k, dest) in dests.iter().enumerate() {
                    let want: Vec<Vec<u8>> = pushes
                        .iter()
                        .filter(|(_, d)| *d == k)
                        .map(|&(i, _)| pattern(i as u8, lens[i]))
                        .collect();
                    assert_eq!(drain(dest, want.len()), want, "{pushes:?} to {k}");
                    assert_quiet(dest);
                }
            }
        }
    }

    /// A socket that cannot do GSO (SO_NO_CHECK makes the kernel refuse segmented sends with
    /// EINVAL) falls back for good, resends the run plainly and counts exactly.
    #[test]
    fn gso_refusal_falls_back_for_good() {
        if !Offload::probe().gso {
            return;
        }
        let s = bind_local(Offload {
            gro: false,
            gso: true,
        });
        set_int(&s.socket, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
        let src = client();
        let dst = client();
        for k in 0..3u8 {
            src.send_to(&pattern(k, 200), s.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut rx = RecvBatch::new(8, 2048);
        assert_eq!(s.recv_batch(&mut rx).unwrap(), 3);
        let mut tx = SendBatch::new(16);
        for i in [0, 1, 2, 0, 1, 2, 2] {
            assert!(tx.push(i, dst.local_addr().unwrap()));
        }
        assert_eq!(s.send_batch(&mut tx, &rx), (7, 0));
        assert!(s.gso_fell_back());
        assert!(!s.offload().gso);
        assert_eq!(tx.last_messages(), 7);
        let want: Vec<_> = [0u8, 1, 2, 0, 1, 2, 2]
            .iter()
            .map(|&k| pattern(k, 200))
            .collect();
        assert_eq!(drain(&dst, 7), want);
        assert_quiet(&dst);
    }

    /// The same split and segmentation over IPv6 (`[::1]`), skipped where there is none.
    #[test]
    fn gro_and_gso_over_ipv6_loopback() {
        let Ok(c) = UdpSocket::bind("[::1]:0") else {
            return;
        };
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let s = FastPathSocket::bind_with(
            "[::1]:0".parse().unwrap(),
            Duration::from_millis(500),
            Offload::probe(),
        )
        .unwrap();
        let mut data = Vec::new();
        for k in 0..5u8 {
            data.extend(pattern(k, 100));
        }
        data.extend(pattern(5, 30));
        let want: Vec<Vec<u8>> = data.chunks(100).map(<[u8]>::to_vec).collect();
        gso_send(&c, s.local_addr().unwrap(), &data, 100);
        let mut rx = RecvBatch::new(16, 2048);
        let (got, _) = recv_logical(&s, &mut rx, 6);
        let mut tx = SendBatch::new(16);
        for (i, (d, from)) in got.iter().enumerate() {
            assert_eq!(d, &want[i]);
            assert_eq!(*from, Some(c.local_addr().unwrap()));
        }
        // Echo them all back (one call delivered them all when GRO coalesced them).
        if s.offload().gro {
            assert_eq!(
                (got.len(), rx.messages()),
                (6, 1),
                "coalesced over IPv6 too"
            );
        }
        if got.len() == rx.len() {
            for i in 0..rx.len() {
                assert!(tx.push(i, c.local_addr().unwrap()));
            }
            assert_eq!(s.send_batch(&mut tx, &rx), (6, 0));
            if s.offload().gso {
                assert_eq!(tx.last_messages(), 1);
            }
            assert_eq!(drain(&c, 6), want);
        }
    }
}
