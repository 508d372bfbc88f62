//! The C-layout plumbing of the fast-path socket: `sockaddr_storage` to and from
//! `SocketAddr`, the control messages it reads and writes (`UDP_GRO` on receive,
//! `UDP_SEGMENT` on send), zeroed C structs and one `setsockopt`.
//!
//! Owns every `unsafe` cast between Rust and the kernel's structs except the syscalls
//! themselves (`socket`). No allocation after setup, no syscall but `setsockopt`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use socket2::Socket;

/// A control buffer for one message, aligned for `cmsghdr`: room for a few int-sized cmsgs
/// (one `UDP_GRO` or `UDP_SEGMENT` needs `CMSG_SPACE(4)` = 24 bytes).
pub(super) type Ctrl = [u64; 8];

pub(super) fn set_int(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
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
pub(super) fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
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
pub(super) fn std_to_sockaddr(
    addr: SocketAddr,
    ss: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
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

pub(super) fn zeroed_vec<T>(n: usize) -> Vec<T> {
    (0..n)
        // SAFETY: only used for plain C structs (sockaddr_storage, iovec, mmsghdr) for which
        // all-zero bytes (null pointers, zero lengths) is a valid value.
        .map(|_| unsafe { mem::zeroed::<T>() })
        .collect()
}

/// Reads the `UDP_GRO` segment size from a received message's control data (0 when absent).
pub(super) fn gro_size(h: &libc::msghdr) -> usize {
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

/// Points `h`'s control data at `ctrl` holding one `UDP_SEGMENT` cmsg of `seg` bytes: the
/// kernel splits the message's payload into segments of that size.
pub(super) fn set_segment_size(h: &mut libc::msghdr, ctrl: &mut Ctrl, seg: u16) {
    h.msg_control = ctrl.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
    // SAFETY: the control buffer is 64 bytes, aligned for cmsghdr, and larger than
    // CMSG_SPACE(2), so the first header and its 2 data bytes fit.
    unsafe {
        let cm = libc::CMSG_FIRSTHDR(h);
        (*cm).cmsg_level = libc::SOL_UDP;
        (*cm).cmsg_type = libc::UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg);
    }
}

/// No control data on `h`.
pub(super) fn clear_control(h: &mut libc::msghdr) {
    h.msg_control = std::ptr::null_mut();
    h.msg_controllen = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip() {
        for a in ["127.0.0.1:5", "[::1]:7", "[2001:db8::1]:65535", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut ss: libc::sockaddr_storage = zeroed_vec(1).pop().unwrap();
            std_to_sockaddr(a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss), Some(a));
        }
    }
}
