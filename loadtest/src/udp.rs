//! The raw UDP load engine behind `duet-loadtest udp`: paced sending over many endpoints
//! and batched receivers, the same for every target so their figures compare.
//!
//! Owns the per-endpoint sockets of the `ports` layout (bound to 127.0.0.1, large kernel
//! buffers), the payload layout of a probe packet, the pacing (a TOTAL rate spread
//! round-robin over endpoints in 250 µs ticks, batches of up to 64 packets handed to the
//! sender, no catch-up bursts: more than ~2 ms of overdue packets are skipped and counted,
//! exactly like `loadgen.c`), and one receiver thread (epoll over its sockets + `recvmmsg` in
//! batches of 64, one-way latency into a [`Hist`]). It does not know what the target is,
//! nor how many workers run (`udpgen`) or how endpoints are addressed (`udpnet`): the caller
//! gives each endpoint its header prefix and destination, and does any hello/bind exchange
//! first (see `udpbench`).
//!
//! Probe packet: `prefix | send time (u64, CLOCK_MONOTONIC ns, little endian) | seq (u64 LE;
//! u64::MAX = hello) | filler 0x5a` up to the requested size. With the 8-byte session id as
//! prefix this is exactly `loadgen.c`'s layout (host order = little endian on x86/arm).

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::hist::Hist;
use crate::udpnet::{CmsgBuf, Net};

/// Packets per `sendmmsg` / `recvmmsg`.
pub const BATCH: usize = 64;
/// Largest datagram sent or received.
pub const MAX_PACKET: usize = 2048;
/// Bytes of probe after the prefix: send time and sequence number.
pub const PROBE_LEN: usize = 16;
/// Sequence number of a hello packet (never counted as media).
pub const HELLO_SEQ: u64 = u64::MAX;
/// Pacing tick.
pub const TICK: Duration = Duration::from_micros(250);
/// How long the receiver keeps going after the last send.
pub const DRAIN: Duration = Duration::from_millis(500);

/// Set by SIGINT/SIGTERM (see [`install_stop_handler`]); every loop polls it.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Relaxed);
}

/// Installs SIGINT/SIGTERM handlers that set [`STOP`] (async-signal-safe: one atomic store).
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic; sigaction with a zeroed struct and a
    // valid function pointer is the documented way to install it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock `loadgen.c` stamps with).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes the probe (send time, seq) after `prefix_len` bytes of `buf`.
#[inline]
pub fn write_probe(buf: &mut [u8], prefix_len: usize, ts_ns: u64, seq: u64) {
    buf[prefix_len..prefix_len + 8].copy_from_slice(&ts_ns.to_le_bytes());
    buf[prefix_len + 8..prefix_len + 16].copy_from_slice(&seq.to_le_bytes());
}

/// Reads `(send time, seq)` after `prefix_len` bytes, if the packet is long enough.
#[inline]
pub fn read_probe(buf: &[u8], prefix_len: usize) -> Option<(u64, u64)> {
    let p = buf.get(prefix_len..prefix_len + PROBE_LEN)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&p[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[8..]);
    Some((u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

fn set_buf(fd: i32, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    let v = bytes as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = &v as *const libc::c_int as *const libc::c_void;
    // SAFETY: setsockopt reads one c_int through a valid pointer; failures are ignored
    // (the *FORCE variant needs CAP_NET_ADMIN, the plain one is capped by rmem_max).
    unsafe {
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) < 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
        }
    }
}

/// Sets a socket's kernel receive and send buffer sizes (forced past the sysctl caps where
/// allowed; best effort).
pub fn set_buffers(s: &UdpSocket, rcv: usize, snd: usize) {
    set_buf(s.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, rcv);
    set_buf(s.as_raw_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, snd);
}

/// `n` non-blocking UDP sockets on 127.0.0.1 (ephemeral ports) with the buffer sizes
/// `loadgen.c` uses: 64 MiB of receive buffer spread over all (256 KiB..8 MiB each), 4 MiB send.
pub fn bind_sockets(n: usize) -> io::Result<Vec<UdpSocket>> {
    let rcv = ((64usize << 20) / n.max(1)).clamp(256 << 10, 8 << 20);
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            set_buffers(&s, rcv, 4 << 20);
            Ok(s)
        })
        .collect()
}

/// Raises RLIMIT_NOFILE's soft limit for `need` descriptors; returns the limit now.
pub fn raise_nofile(need: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write one rlimit through valid pointers.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < need {
            rl.rlim_cur = need.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
        rl.rlim_cur
    }
}

/// This process's CPU seconds (user + system, all threads).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage through a valid pointer.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What the pacer did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendStats {
    /// Packets handed to the kernel (or to QUIC).
    pub sent: u64,
    /// Packets the send call refused (buffer full, too large...).
    pub send_failed: u64,
    /// Packets never attempted because the sender fell more than ~2 ms behind.
    pub skipped: u64,
    /// From the first tick to the last send, seconds.
    pub elapsed_s: f64,
    /// Stopped early by Ctrl-C / SIGTERM.
    pub interrupted: bool,
}

/// Paces `pps` packets per second in total for `duration`, spread round-robin over
/// `prefixes.len()` endpoints, in 250 µs ticks. `send(eps, bufs)` sends batch buffer
/// `bufs[i]` (`size` bytes, prefix and probe written) from endpoint `eps[i]`, up to
/// [`BATCH`] at once (each endpoint's packets adjacent), and returns how many went out.
/// Sequence numbers are per endpoint, from 0.
pub fn pace(
    prefixes: &[Vec<u8>],
    pps: f64,
    duration: Duration,
    size: usize,
    send: impl FnMut(&[usize], &[Vec<u8>]) -> usize,
) -> SendStats {
    pace_at(now_ns(), prefixes, pps, duration, size, send)
}

/// [`pace`] from the CLOCK_MONOTONIC instant `t0_ns` (waited for if in the future), so that
/// several pacer threads share one timeline and their rates add up smoothly.
pub fn pace_at(
    t0_ns: u64,
    prefixes: &[Vec<u8>],
    pps: f64,
    duration: Duration,
    size: usize,
    mut send: impl FnMut(&[usize], &[Vec<u8>]) -> usize,
) -> SendStats {
    let nep = prefixes.len().max(1) as u64;
    let mut seqs = vec![0u64; prefixes.len()];
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0x5a; size]).collect();
    let mut eps = [0usize; BATCH];
    let mut st = SendStats::default();
    let early = t0_ns.saturating_sub(now_ns());
    if early > 0 {
        std::thread::sleep(Duration::from_nanos(early));
    }
    let t0 = t0_ns;
    let tend = t0 + duration.as_nanos() as u64;
    let maxlag = ((pps * 0.002) as u64).max(BATCH as u64);
    let mut attempted = 0u64;
    let mut cur = 0usize;
    let mut last = t0;
    loop {
        let t = now_ns();
        if t >= tend {
            break;
        }
        if STOP.load(Relaxed) {
            st.interrupted = true;
            break;
        }
        let target = ((t - t0) as f64 * pps / 1e9) as u64;
        if target > attempted + maxlag {
            st.skipped += target - attempted - maxlag;
            attempted = target - maxlag;
        }
        while attempted < target {
            let due = target - attempted;
            let per = due.div_ceil(nep).min(BATCH as u64) as usize;
            // One batch: `per` packets from each endpoint in turn, as many as fit.
            let want = due.min(BATCH as u64) as usize;
            let ts = now_ns();
            let mut n = 0;
            while n < want {
                let ep = cur;
                cur = (cur + 1) % prefixes.len();
                let k = per.min(want - n);
                let p = &prefixes[ep];
                for b in &mut bufs[n..n + k] {
                    b[..p.len()].copy_from_slice(p);
                    write_probe(b, p.len(), ts, seqs[ep]);
                    seqs[ep] += 1;
                }
                eps[n..n + k].fill(ep);
                n += k;
            }
            let ok = send(&eps[..n], &bufs[..n]).min(n);
            attempted += n as u64;
            st.sent += ok as u64;
            st.send_failed += (n - ok) as u64;
        }
        last = now_ns();
        let next = (last + TICK.as_nanos() as u64).min(tend);
        if next > last {
            std::thread::sleep(Duration::from_nanos(next - last));
        }
    }
    st.elapsed_s = (last.max(now_ns().min(tend)) - t0) as f64 / 1e9;
    st
}

impl SendStats {
    /// Adds another pacer's counts; the window is the longest of the two.
    pub fn merge(&mut self, o: &SendStats) {
        self.sent += o.sent;
        self.send_failed += o.send_failed;
        self.skipped += o.skipped;
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
        self.interrupted |= o.interrupted;
    }
}

/// What the receiver saw.
#[derive(Debug, Clone, Default)]
pub struct RecvStats {
    /// Media packets that arrived where they should, with a valid probe.
    pub received: u64,
    pub received_bytes: u64,
    /// Hello packets (seq = u64::MAX) that came back.
    pub hellos: u64,
    /// Packets too short, or whose prefix is not the peer's.
    pub bad: u64,
    /// One-way latency of every received media packet, µs.
    pub latency: Hist,
}

impl RecvStats {
    /// Accounts one datagram that arrived at an endpoint expecting `expect` as prefix.
    #[inline]
    pub fn on_packet(&mut self, pkt: &[u8], expect: &[u8], now: u64) {
        let Some((ts, seq)) = read_probe(pkt, expect.len()) else {
            self.bad += 1;
            return;
        };
        if &pkt[..expect.len()] != expect {
            self.bad += 1;
        } else if seq == HELLO_SEQ {
            self.hellos += 1;
        } else {
            self.received += 1;
            self.received_bytes += pkt.len() as u64;
            self.latency.record(now.saturating_sub(ts) / 1000);
        }
    }

    /// Adds another receiver's counts and samples (histograms add exactly).
    pub fn merge(&mut self, o: &RecvStats) {
        self.received += o.received;
        self.received_bytes += o.received_bytes;
        self.hellos += o.hellos;
        self.bad += o.bad;
        let _ = self.latency.add(&o.latency);
    }
}

/// One receive thread over `net`'s sockets `sockets`: epoll + `recvmmsg`. A packet counts
/// for the endpoint it was addressed to (see [`Net::endpoint_of_msg`]), whose peer's header
/// it must carry: `expect[endpoint]`. Runs until `stop` is set, then returns what it saw.
pub fn spawn_receiver(
    net: Arc<Net>,
    sockets: Vec<usize>,
    expect: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    live_received: Arc<AtomicU64>,
) -> io::Result<std::thread::JoinHandle<RecvStats>> {
    // SAFETY: epoll_create1 has no memory preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    for &s in &sockets {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: s as u64,
        };
        let fd = net.socket(s).as_raw_fd();
        // SAFETY: ep and the socket fd are open; ev is a valid epoll_event.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: closing the epoll fd we created.
            unsafe { libc::close(ep) };
            return Err(e);
        }
    }
    std::thread::Builder::new()
        .name("lt-udp-rx".into())
        .spawn(move || {
            let mut st = RecvStats::default();
            let mut bufs = vec![[0u8; MAX_PACKET]; BATCH];
            let mut cmsgs: Vec<CmsgBuf> = vec![[0; 4]; BATCH];
            let mut iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr() as *mut libc::c_void,
                    iov_len: MAX_PACKET,
                })
                .collect();
            // SAFETY: mmsghdr is plain old data; zeroed is a valid empty header.
            let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
                .map(|i| {
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = &mut iov[i];
                    m.msg_hdr.msg_iovlen = 1;
                    m.msg_hdr.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
                    m
                })
                .collect();
            let maxev = sockets.len().clamp(1, 1024);
            let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; maxev];
            while !stop.load(Relaxed) {
                // SAFETY: evs has room for maxev events.
                let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), maxev as libc::c_int, 20) };
                for ev in evs.iter().take(n.max(0) as usize) {
                    let s = ev.u64 as usize;
                    let fd = net.socket(s).as_raw_fd();
                    // Bounded rounds per socket, so one busy socket cannot starve the rest.
                    for _ in 0..8 {
                        for m in msgs.iter_mut() {
                            m.msg_hdr.msg_controllen = std::mem::size_of::<CmsgBuf>();
                        }
                        // SAFETY: msgs point at BATCH live iovecs over bufs, each
                        // MAX_PACKET bytes, and BATCH control buffers of the length set
                        // just above; the kernel writes at most that much.
                        let r = unsafe {
                            libc::recvmmsg(
                                fd,
                                msgs.as_mut_ptr(),
                                BATCH as libc::c_uint,
                                libc::MSG_DONTWAIT,
                                std::ptr::null_mut(),
                            )
                        };
                        if r <= 0 {
                            break;
                        }
                        let now = now_ns();
                        let before = st.received;
                        for k in 0..r as usize {
                            let len = (msgs[k].msg_len as usize).min(MAX_PACKET);
                            match net.endpoint_of_msg(s, &msgs[k].msg_hdr) {
                                Some(e) => st.on_packet(&bufs[k][..len], &expect[e], now),
                                None => st.bad += 1,
                            }
                        }
                        live_received.fetch_add(st.received - before, Relaxed);
                        if (r as usize) < BATCH {
                            break;
                        }
                    }
                }
            }
            // SAFETY: closing the epoll fd this thread owns.
            unsafe { libc::close(ep) };
            st
        })
}

/// `sendmmsg` of `bufs` from `sock` to `dest` (IPv4), or with `None` to the address the
/// socket is connected to (the kernel then reuses the socket's cached route instead of
/// looking one up per packet); returns how many went out.
pub fn send_batch<B: AsRef<[u8]>>(
    sock: &UdpSocket,
    dest: Option<&SocketAddrV4>,
    bufs: &[B],
) -> usize {
    let sa = dest.map(sockaddr_v4);
    let (name, namelen) = match &sa {
        Some(sa) => (
            sa as *const libc::sockaddr_in as *mut libc::c_void,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ),
        None => (std::ptr::null_mut(), 0),
    };
    let mut iov: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain old data; zeroed is a valid empty header.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let n = bufs.len().min(BATCH);
    for i in 0..n {
        let b = bufs[i].as_ref();
        iov[i].iov_base = b.as_ptr() as *mut libc::c_void;
        iov[i].iov_len = b.len();
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = name;
        msgs[i].msg_hdr.msg_namelen = namelen;
    }
    let mut off = 0;
    while off < n {
        // SAFETY: msgs[off..n] point at live buffers and a live sockaddr_in (or none); the
        // kernel only reads them.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr().add(off),
                (n - off) as libc::c_uint,
                0,
            )
        };
        if r <= 0 {
            break;
        }
        off += r as usize;
    }
    off
}

/// The C form of an IPv4 socket address.
pub fn sockaddr_v4(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// The IPv4 form of a target (the raw engine is IPv4 only; every bench runs on 127.0.0.1).
pub fn v4(a: SocketAddr) -> io::Result<SocketAddrV4> {
    match a {
        SocketAddr::V4(v) => Ok(v),
        SocketAddr::V6(v) => v
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, v.port()))
            .ok_or_else(|| io::Error::other(format!("{a}: the udp bench is IPv4 only"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_roundtrips_and_classifies() {
        let mut b = vec![0u8; 40];
        b[..8].copy_from_slice(&7u64.to_be_bytes());
        write_probe(&mut b, 8, 1_000_000, 5);
        assert_eq!(read_probe(&b, 8), Some((1_000_000, 5)));
        let mut st = RecvStats::default();
        st.on_packet(&b, &7u64.to_be_bytes(), 3_000_000);
        assert_eq!((st.received, st.bad), (1, 0));
        assert_eq!(st.latency.quantile_us(0.5), 2000);
        st.on_packet(&b, &8u64.to_be_bytes(), 3_000_000);
        assert_eq!(st.bad, 1);
        st.on_packet(&b[..20], &7u64.to_be_bytes(), 3_000_000);
        assert_eq!(st.bad, 2);
        write_probe(&mut b, 8, 1, HELLO_SEQ);
        st.on_packet(&b, &7u64.to_be_bytes(), 3_000_000);
        assert_eq!((st.hellos, st.received), (1, 1));
    }

    #[test]
    fn pacing_spreads_the_total_over_endpoints() {
        let prefixes: Vec<Vec<u8>> = (0..4u64).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut per_ep = [0u64; 4];
        let st = pace(
            &prefixes,
            4000.0,
            Duration::from_millis(200),
            32,
            |eps, bufs| {
                assert_eq!(eps.len(), bufs.len());
                for (b, &ep) in bufs.iter().zip(eps) {
                    assert_eq!(&b[..8], &prefixes[ep][..]);
                    assert_eq!(b.len(), 32);
                    per_ep[ep] += 1;
                }
                bufs.len()
            },
        );
        assert!(st.sent > 0 && st.send_failed == 0);
        assert_eq!(per_ep.iter().sum::<u64>(), st.sent);
        // Round-robin: no endpoint gets more than a batch above another.
        let (lo, hi) = (per_ep.iter().min().unwrap(), per_ep.iter().max().unwrap());
        assert!(hi - lo <= BATCH as u64, "{per_ep:?}");
    }
}
