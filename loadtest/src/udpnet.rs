//! The generator's endpoints on the wire: their local addresses and the sockets behind them,
//! in one of two layouts (`--addressing`).
//!
//! - `ports` (default): one socket per endpoint on 127.0.0.1, an ephemeral port each, as
//!   `loadgen.c` does. A send or receive call serves one endpoint, so at 1,000 pairs nearly
//!   every call carries one packet.
//! - `ips`: one socket per generator worker, bound to a port P on every address of `lo`
//!   (INADDR_ANY tied to `lo` with SO_BINDTODEVICE, so nothing off the machine reaches it),
//!   and a distinct loopback address 127.a.b.c:P per endpoint. Sends choose the endpoint's
//!   source address with an IP_PKTINFO control message; receives tell the endpoint by the
//!   destination address IP_PKTINFO reports. One `sendmmsg` / `recvmmsg` then carries up to
//!   64 packets of as many endpoints, as a forwarder's calls do, so per packet the generator
//!   costs about what the forwarder costs. A forwarder sees the same thing either way: every
//!   endpoint a distinct source address. Needs CAP_NET_RAW (SO_BINDTODEVICE).
//!
//! Owns the layout, one-off sends and receives (set-up), the batched send of the hot path
//! and the per-message endpoint lookup of the batched receive (the receive loop is `udp`).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;

use crate::udp::{self, BATCH};

/// How endpoints get distinct addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Addressing {
    /// One socket per endpoint, 127.0.0.1 and an ephemeral port each
    Ports,
    /// One socket per worker, a 127.x.y.z address per endpoint (IP_PKTINFO; needs CAP_NET_RAW)
    Ips,
}

impl Addressing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ports => "ports",
            Self::Ips => "ips",
        }
    }
}

/// Space for one IP_PKTINFO control message, 8-byte aligned as cmsghdr needs.
pub type CmsgBuf = [u64; 4];

/// One datagram taken off a socket during set-up.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The endpoint it was addressed to (`None`: an address that is no endpoint's).
    pub endpoint: Option<usize>,
    pub len: usize,
    pub from: SocketAddr,
}

/// The endpoints' addresses and sockets.
#[derive(Debug)]
pub struct Net {
    addressing: Addressing,
    socks: Vec<UdpSocket>,
    local: Vec<SocketAddrV4>,
    /// Socket of each endpoint.
    owner: Vec<usize>,
    /// Endpoints of each socket.
    groups: Vec<Range<usize>>,
}

/// Endpoint `e`'s address in the `ips` layout: 127.1.0.1 onwards (host part never 0).
fn ip_of(e: usize) -> Ipv4Addr {
    Ipv4Addr::from((127u32 << 24) + (1 << 16) + e as u32 + 1)
}

/// The endpoint an `ips` address belongs to, if any.
fn endpoint_of_ip(ip: Ipv4Addr) -> Option<usize> {
    let v = u32::from(ip);
    (v >> 24 == 127)
        .then(|| (v & 0xFF_FFFF).checked_sub((1 << 16) + 1))
        .flatten()
        .map(|e| e as usize)
}

fn setsockopt_int(
    fd: i32,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int through a valid pointer.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A non-blocking socket on port 0 of every `lo` address, reporting each packet's
/// destination address.
fn bind_lo_any(rcvbuf: usize) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    s.bind_device(Some(b"lo")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--addressing ips: SO_BINDTODEVICE lo needs CAP_NET_RAW ({e})"),
        )
    })?;
    setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
    let s: UdpSocket = s.into();
    udp::set_buffers(&s, rcvbuf, 8 << 20);
    Ok(s)
}

impl Net {
    /// `endpoints` endpoints laid out as `addressing` says; with `ips`, one socket per range
    /// of `groups` (the generator workers' split, see `udpgen::split`).
    pub fn bind(
        endpoints: usize,
        groups: &[Range<usize>],
        addressing: Addressing,
    ) -> io::Result<Net> {
        match addressing {
            Addressing::Ports => {
                let socks = udp::bind_sockets(endpoints)?;
                let local = socks
                    .iter()
                    .map(|s| s.local_addr().and_then(udp::v4))
                    .collect::<io::Result<_>>()?;
                Ok(Net {
                    addressing,
                    socks,
                    local,
                    owner: (0..endpoints).collect(),
                    groups: (0..endpoints).map(|e| e..e + 1).collect(),
                })
            }
            Addressing::Ips => {
                let rcv = ((256usize << 20) / groups.len().max(1)).clamp(8 << 20, 64 << 20);
                let mut net = Net {
                    addressing,
                    socks: Vec::new(),
                    local: vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0); endpoints],
                    owner: vec![0; endpoints],
                    groups: groups.to_vec(),
                };
                for (s, g) in groups.iter().enumerate() {
                    let sock = bind_lo_any(rcv)?;
                    let port = sock.local_addr()?.port();
                    for e in g.clone() {
                        net.local[e] = SocketAddrV4::new(ip_of(e), port);
                        net.owner[e] = s;
                    }
                    net.socks.push(sock);
                }
                Ok(net)
            }
        }
    }

    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    pub fn endpoints(&self) -> usize {
        self.local.len()
    }

    pub fn sockets(&self) -> usize {
        self.socks.len()
    }

    pub fn socket(&self, s: usize) -> &UdpSocket {
        &self.socks[s]
    }

    /// The socket endpoint `e` sends and receives on.
    pub fn owner(&self, e: usize) -> usize {
        self.owner[e]
    }

    /// Endpoint `e`'s address, as the forwarder sees it.
    pub fn local(&self, e: usize) -> SocketAddrV4 {
        self.local[e]
    }

    /// Connects endpoint `e`'s socket to `dest` (`ports` only: a shared socket talks to many),
    /// so its sends reuse the socket's route.
    pub fn connect(&self, e: usize, dest: SocketAddrV4) -> io::Result<()> {
        match self.addressing {
            Addressing::Ports => self.socks[e].connect(dest),
            Addressing::Ips => Ok(()),
        }
    }

    /// One datagram from endpoint `e` to `dest` (set-up: hellos, BIND, TURN requests).
    pub fn send_to(&self, e: usize, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
        match self.addressing {
            Addressing::Ports => self.socks[e].send_to(buf, dest),
            Addressing::Ips => {
                let dest = udp::v4(dest)?;
                let n = self.send_batch(&[e], &[dest], std::slice::from_ref(&buf));
                if n == 1 {
                    Ok(buf.len())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        }
    }

    /// One datagram off socket `s`, if one is waiting (set-up).
    pub fn recv_from(&self, s: usize, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let sock = &self.socks[s];
        let r = match self.addressing {
            Addressing::Ports => sock.recv_from(buf).map(|(len, from)| Received {
                endpoint: Some(s),
                len,
                from,
            }),
            Addressing::Ips => self.recv_pktinfo(s, buf),
        };
        match r {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn recv_pktinfo(&self, s: usize, buf: &mut [u8]) -> io::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: zeroed sockaddr_in and msghdr are valid empty values.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut cmsg: CmsgBuf = [0; 4];
        // SAFETY: as above.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_name = &mut from as *mut libc::sockaddr_in as *mut libc::c_void;
        m.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        m.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        m.msg_controllen = std::mem::size_of::<CmsgBuf>();
        // SAFETY: every pointer in m is live for the call; the kernel writes within the
        // lengths given.
        let n = unsafe { libc::recvmsg(self.socks[s].as_raw_fd(), &mut m, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
        Ok(Received {
            endpoint: self.endpoint_of_msg(s, &m),
            len: n as usize,
            from: SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(from.sin_port))),
        })
    }

    /// The endpoint a message received on socket `s` was addressed to: `s`'s own (`ports`),
    /// or the one whose address IP_PKTINFO names (`ips`).
    #[inline]
    pub fn endpoint_of_msg(&self, s: usize, m: &libc::msghdr) -> Option<usize> {
        match self.addressing {
            Addressing::Ports => Some(self.groups[s].start),
            Addressing::Ips => {
                // SAFETY: m's control buffer was filled by the kernel for this message and
                // msg_controllen bounds it; the CMSG macros stay inside it.
                let ip = unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(m);
                    let mut found = None;
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO
                        {
                            let pi = std::ptr::read_unaligned(
                                libc::CMSG_DATA(c) as *const libc::in_pktinfo
                            );
                            found = Some(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)));
                            break;
                        }
                        c = libc::CMSG_NXTHDR(m, c);
                    }
                    found
                };
                let e = endpoint_of_ip(ip?)?;
                (self.groups[s].contains(&e)).then_some(e)
            }
        }
    }

    /// The hot path: sends `bufs[i]` from endpoint `eps[i]` to `dests[i]`, all endpoints of
    /// one socket with `ips` (one `sendmmsg`), runs of one endpoint each with `ports`
    /// (connected sockets, one `sendmmsg` per run). Returns how many went out.
    pub fn send_batch<B: AsRef<[u8]>>(
        &self,
        eps: &[usize],
        dests: &[SocketAddrV4],
        bufs: &[B],
    ) -> usize {
        let n = eps.len().min(bufs.len()).min(dests.len()).min(BATCH);
        match self.addressing {
            Addressing::Ports => {
                let mut sent = 0;
                let mut i = 0;
                while i < n {
                    let mut j = i + 1;
                    while j < n && eps[j] == eps[i] {
                        j += 1;
                    }
                    let ok = udp::send_batch(&self.socks[eps[i]], None, &bufs[i..j]);
                    sent += ok;
                    if ok < j - i {
                        break;
                    }
                    i = j;
                }
                sent
            }
            Addressing::Ips if n == 0 => 0,
            Addressing::Ips => self.send_pktinfo(&eps[..n], &dests[..n], &bufs[..n]),
        }
    }

    fn send_pktinfo<B: AsRef<[u8]>>(
        &self,
        eps: &[usize],
        dests: &[SocketAddrV4],
        bufs: &[B],
    ) -> usize {
        let n = eps.len();
        let fd = self.socks[self.owner[eps[0]]].as_raw_fd();
        // SAFETY: plain old data; zeroed values are valid empty headers and addresses.
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        let mut cmsgs: [CmsgBuf; BATCH] = [[0; 4]; BATCH];
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let space =
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) } as usize;
        for i in 0..n {
            debug_assert_eq!(self.owner[eps[i]], self.owner[eps[0]]);
            names[i] = udp::sockaddr_v4(&dests[i]);
            let b = bufs[i].as_ref();
            iov[i].iov_base = b.as_ptr() as *mut libc::c_void;
            iov[i].iov_len = b.len();
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = space;
            // SAFETY: the control buffer holds CMSG_SPACE(in_pktinfo) bytes, 8-aligned;
            // CMSG_FIRSTHDR of a header with that length points at its start.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len =
                    libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
                let pi = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(*self.local[eps[i]].ip()).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, pi);
            }
        }
        let mut off = 0;
        while off < n {
            // SAFETY: msgs[off..n] point at live names, iovecs, buffers and control
            // messages; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(fd, msgs.as_mut_ptr().add(off), (n - off) as libc::c_uint, 0)
            };
            if r <= 0 {
                break;
            }
            off += r as usize;
        }
        off
    }

    /// The sockets the endpoints in `eps` use, each once, in order of first use.
    pub fn sockets_of(&self, eps: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for e in eps {
            let s = self.owner[e];
            if out.last() != Some(&s) && !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_addresses_roundtrip_and_stay_in_loopback() {
        assert_eq!(ip_of(0), Ipv4Addr::new(127, 1, 0, 1));
        for e in [0, 1, 254, 255, 65_535, 65_536, 39_999] {
            let ip = ip_of(e);
            assert!(ip.is_loopback() && ip != Ipv4Addr::LOCALHOST, "{ip}");
            assert_eq!(endpoint_of_ip(ip), Some(e));
        }
        assert_eq!(endpoint_of_ip(Ipv4Addr::LOCALHOST), None);
        assert_eq!(endpoint_of_ip(Ipv4Addr::new(10, 1, 0, 1)), None);
    }
}
