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
//!
//! Files: this one (the socket: bind, offload probe, the `recvmmsg`/`sendmmsg` calls),
//! `batch` (the buffers and the GSO grouping), `cmsg` (sockaddr and control-message
//! plumbing), `tests` (loopback).

mod batch;
mod cmsg;
#[cfg(test)]
mod tests;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use batch::GRO_SLOT;
pub use batch::{RecvBatch, SendBatch};
use cmsg::{gro_size, set_int, Ctrl};

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
        self.recv_with(rx, libc::MSG_WAITFORONE)
    }

    /// [`FastPathSocket::recv_batch`] without blocking: what is queued now, or
    /// `ErrorKind::WouldBlock` when nothing is (the worker's coalescing and busy polling).
    pub fn try_recv_batch(&self, rx: &mut RecvBatch) -> io::Result<usize> {
        self.recv_with(rx, libc::MSG_DONTWAIT)
    }

    fn recv_with(&self, rx: &mut RecvBatch, flags: libc::c_int) -> io::Result<usize> {
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
                flags,
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
    /// Steers new datagrams of this socket's `SO_REUSEPORT` group (every worker socket bound
    /// on the port) to the first `active` sockets, in the order they were bound, by channel
    /// pair: a classic BPF program returns `pair index % active`, read from the fast-path
    /// header (the channel id's low word, bytes 6..10 of the datagram, is
    /// `pair_index << 1 | side`), so both ends of a pair land on the same socket. A datagram
    /// too short to hold it goes to the first socket. Replaces the previous program; the
    /// kernel applies it to the group from the next datagram on, and datagrams already
    /// queued stay where they are (their worker still drains them). `active` of 0 or more
    /// than the sockets is clamped by the caller.
    pub fn steer(&self, active: usize) -> io::Result<()> {
        /// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic; the same on x86 and arm).
        const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
        const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
        const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
        const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
        let op = |code: u16, k: u32| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let mut prog = [
            // A = the channel id's low 32 bits (big endian, as on the wire); the kernel ends
            // the program with 0 when the datagram is shorter.
            op(LD_W_ABS, 6),
            op(RSH_K, 1),
            op(MOD_K, active.max(1) as u32),
            op(RET_A, 0),
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `prog`, both live for the call; the kernel copies them.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_CBPF,
                (&fprog as *const libc::sock_fprog).cast(),
                mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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
