//! The fast path's UDP socket: one `SO_REUSEPORT` socket per worker thread, batched
//! `recvmmsg`/`sendmmsg` over preallocated buffers, and the UDP GRO/GSO probe.
//!
//! Owns the syscalls and their buffers: a [`RecvBatch`] holds `batch` fixed-size slots and
//! their source addresses, a [`SendBatch`] names which received slots go to which address and
//! sends them straight from the receive buffers (the same bytes, no copy, no allocation per
//! packet). It does not decide anything about packets (that is `table`) and does not loop
//! (that is `worker`).
//!
//! GRO/GSO: [`Offload::probe`] asks the kernel once, at start, whether `UDP_GRO` and
//! `UDP_SEGMENT` can be set on a UDP socket, and the result is logged by the caller. This
//! version always uses the fallback (one datagram per `mmsghdr` slot, no segmentation);
//! using GRO on receive and GSO on send when the probe says so is future work. Linux only.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// What the kernel offers for UDP segmentation offload, probed once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// `setsockopt(SOL_UDP, UDP_GRO)` accepted: receive coalescing is available.
    pub gro: bool,
    /// `setsockopt(SOL_UDP, UDP_SEGMENT)` accepted: send segmentation is available.
    pub gso: bool,
}

impl Offload {
    /// Probes on a throwaway socket; any failure reads as "absent" (the fallback is plain
    /// `recvmmsg`/`sendmmsg`, which is always used by this version).
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

    /// One line for the start-up log.
    pub fn describe(self) -> String {
        let yn = |b| if b { "available" } else { "absent" };
        format!(
            "UDP GRO {}, UDP GSO {}; fast path uses recvmmsg/sendmmsg without segmentation offload",
            yn(self.gro),
            yn(self.gso)
        )
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

/// Preallocated receive buffers for one `recvmmsg`: `batch` slots of `slot` bytes.
pub struct RecvBatch {
    bufs: Vec<u8>,
    slot: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    n: usize,
}

impl RecvBatch {
    /// `batch` datagrams per syscall, each up to `slot` bytes (larger ones read as empty).
    pub fn new(batch: usize, slot: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        Self {
            bufs: vec![0u8; batch * slot],
            slot,
            addrs: zeroed_vec(batch),
            iovs: zeroed_vec(batch),
            hdrs: zeroed_vec(batch),
            lens: vec![0; batch],
            n: 0,
        }
    }

    /// Datagrams in the last receive.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The `i`th datagram of the last receive and its source (`None` for a non-IP source).
    #[inline]
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * self.slot;
        (
            &self.bufs[start..start + self.lens[i]],
            sockaddr_to_std(&self.addrs[i]),
        )
    }
}

/// Preallocated send descriptors for one `sendmmsg`: which received slot goes where.
pub struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    slots: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

impl SendBatch {
    pub fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        Self {
            addrs: zeroed_vec(batch),
            addr_lens: vec![0; batch],
            slots: vec![0; batch],
            iovs: zeroed_vec(batch),
            hdrs: zeroed_vec(batch),
            n: 0,
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

    /// Queues received slot `slot` to `to`; false when the batch is full.
    #[inline]
    pub fn push(&mut self, slot: usize, to: SocketAddr) -> bool {
        if self.n == self.slots.len() {
            return false;
        }
        self.slots[self.n] = slot;
        self.addr_lens[self.n] = std_to_sockaddr(to, &mut self.addrs[self.n]);
        self.n += 1;
        true
    }
}

/// One worker's UDP socket.
#[derive(Debug)]
pub struct FastPathSocket {
    socket: Socket,
}

impl FastPathSocket {
    /// Binds a UDP socket on `addr` with `SO_REUSEPORT` (so each worker binds its own on the
    /// same port and the kernel spreads flows by 4-tuple), blocking with `read_timeout` so a
    /// worker can notice its stop flag.
    pub fn bind(addr: SocketAddr, read_timeout: Duration) -> io::Result<Self> {
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
        socket.bind(&addr.into())?;
        Ok(Self { socket })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// One `recvmmsg` (`MSG_WAITFORONE`: blocks for the first datagram up to the read
    /// timeout, then takes what is queued). Returns the number received; a timeout is
    /// `ErrorKind::WouldBlock`/`TimedOut`.
    pub fn recv_batch(&self, rx: &mut RecvBatch) -> io::Result<usize> {
        rx.n = 0;
        let cap = rx.hdrs.len();
        let base = rx.bufs.as_mut_ptr();
        for i in 0..cap {
            // SAFETY: i * slot + slot <= bufs.len() by construction, so the pointer stays
            // inside the buffer.
            let p = unsafe { base.add(i * rx.slot) };
            rx.iovs[i] = libc::iovec {
                iov_base: p.cast(),
                iov_len: rx.slot,
            };
            let h = &mut rx.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut rx.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut rx.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every mmsghdr points at a live iovec, buffer slot and sockaddr_storage owned
        // by `rx`, which is exclusively borrowed for the call; `cap` is the array's length.
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
            // A datagram larger than a slot was cut: present it as empty so it is dropped.
            rx.lens[i] = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                (h.msg_len as usize).min(rx.slot)
            };
        }
        rx.n = n;
        Ok(n)
    }

    /// Sends every queued datagram of `tx` from `rx`'s buffers with `sendmmsg`, resuming after
    /// partial sends and skipping a datagram the kernel refuses. Returns (sent, failed).
    /// `tx` must have been filled from this `rx` receive.
    pub fn send_batch(&self, tx: &mut SendBatch, rx: &RecvBatch) -> (usize, usize) {
        let n = tx.n;
        for i in 0..n {
            let slot = tx.slots[i];
            let (data, _) = rx.get(slot);
            tx.iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut tx.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut tx.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = tx.addr_lens[i];
            h.msg_hdr.msg_iov = &mut tx.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        let (mut sent, mut failed, mut at) = (0, 0, 0);
        while at < n {
            // SAFETY: hdrs[at..n] point at live iovecs and addresses in `tx` and at data in
            // `rx`, both borrowed for the whole call; the kernel only reads them.
            let rc = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    tx.hdrs.as_mut_ptr().add(at),
                    (n - at) as libc::c_uint,
                    0,
                )
            };
            if rc <= 0 {
                if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first remaining datagram was refused: skip it.
                failed += 1;
                at += 1;
            } else {
                sent += rc as usize;
                at += rc as usize;
            }
        }
        tx.n = 0;
        (sent, failed)
    }
    /// Another handle on the same socket (same port, same SO_REUSEPORT member), for sending
    /// from outside the worker: the QUIC path's bridge to fast-path endpoints.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
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
}
