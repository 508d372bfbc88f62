//! The raw-UDP fast path as a media transport: the UDP socket, the bind state machine and
//! the task that drives them.
//!
//! With [`FastPathMode::Prefer`] and a [`FastPathOffer`] in `Joined`, the call opens a UDP
//! socket connected to the relay's fast-path address (so only the relay's datagrams are
//! accepted, and an ICMP "port unreachable" surfaces as an error), sends the offer's BIND
//! packet and resends it with backoff (100, 200, 400 ms, ...) until the relay confirms with
//! `FastPathBound` on the control stream or `fast_path_bind_timeout` passes. Confirmed: media
//! goes out as `FastPathHeader | body` over UDP. Not confirmed, or the socket reports an
//! error: media stays on QUIC datagrams and [`crate::Event::FastPathFallback`] says why. The
//! call never fails because of the fast path. Every `fast_path_refresh` a fresh ticket is
//! asked for and BIND is resent from the current socket (keeps NAT mappings open; a NAT that
//! changed the source port gets the binding moved, the fresh ticket having a higher seq).
//! After a fallback by timeout (not after a socket error) the SDK retries quietly, at once
//! and then at each refresh, from a new socket with a fresh ticket: that recovers a lost BIND
//! and also a lost confirmation (a BIND from a new address is a move, which the relay
//! confirms).
//! `Call::rebind_fast_path` opens a new socket and binds it with a fresh ticket.
//!
//! Owns: the sockets, `BindMachine` (sans-IO: when to send BIND, ask for a ticket, give
//! up, switch transport) and its driver task, and turning a received fast-path datagram
//! into the QUIC media-datagram form the reassembler takes. Does not own fragmentation
//! (`fragment`), sealing (`e2ee`) or the control stream (`call`).
//!
//! | module | owns |
//! |---|---|
//! | `bind` | `BindMachine`: the sans-IO bind state machine (when to send BIND, ask for a ticket, give up, switch transport) |
//! | `link` | the sockets, `FastLink` (what the call and its tasks share) and the driver task |

pub(crate) mod bind;
pub(crate) mod link;

use bytes::{Bytes, BytesMut};
use duet_proto::fastpath::{FastPathHeader, PacketType, FASTPATH_HEADER_LEN};
use duet_proto::{MediaHeader, MEDIA_HEADER_LEN};

pub(crate) use bind::BindConfig;
pub(crate) use link::{Driver, FastCounters, FastLink, GenSocket, Input, RECV_ROOM};

/// Whether a call may carry media over the relay's raw-UDP fast path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FastPathMode {
    /// QUIC datagrams only.
    #[default]
    Off,
    /// Bind the fast path when the relay offers one and use it once confirmed; QUIC
    /// datagrams otherwise (and whenever the fast path fails).
    Prefer,
}

/// What this endpoint's media is being sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC datagrams on the control connection.
    Quic,
    /// The relay's raw-UDP fast path.
    FastPath,
}

/// Turns a fast-path datagram into the QUIC media-datagram form (`MediaHeader | body`),
/// in place: the media header is written over the last two header bytes. `None` when it is
/// not a fast-path media datagram.
pub(crate) fn to_media_datagram(mut d: BytesMut) -> Option<Bytes> {
    let (header, _) = FastPathHeader::parse(&d).ok()?;
    let PacketType::Media(kind) = header.ty else {
        return None;
    };
    let start = FASTPATH_HEADER_LEN - MEDIA_HEADER_LEN;
    d[start..FASTPATH_HEADER_LEN].copy_from_slice(&MediaHeader::new(kind).to_bytes());
    Some(d.freeze().slice(start..))
}

/// Turns a fast-path piece back into a QUIC media datagram (when a UDP send failed).
pub(crate) fn fast_piece_to_quic(piece: &[u8]) -> Option<Bytes> {
    to_media_datagram(BytesMut::from(piece))
}

#[cfg(test)]
mod tests {
    use super::bind::*;
    use super::*;
    use duet_proto::ChannelId;
    use duet_proto::MediaKind;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    const CFG: BindConfig = BindConfig {
        bind_timeout: Duration::from_millis(1000),
        refresh: Duration::from_secs(10),
        ticket_timeout: Duration::from_secs(5),
    };
    const CH: ChannelId = ChannelId(42);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn binds_resends_with_backoff_and_confirms() {
        let t0 = Instant::now();
        let (mut m, first) = BindMachine::new(CH, CFG, t0);
        assert_eq!(first, vec![Action::SendBind]);
        assert_eq!(m.transport(), Transport::Quic);
        assert_eq!(m.next_deadline(), ms(t0, 100));
        assert!(m.poll(ms(t0, 99)).is_empty());
        assert_eq!(m.poll(ms(t0, 100)), vec![Action::SendBind]);
        assert_eq!(m.next_deadline(), ms(t0, 300));
        assert_eq!(m.poll(ms(t0, 300)), vec![Action::SendBind]);
        assert_eq!(m.next_deadline(), ms(t0, 700));
        // Another channel's confirmation is not ours.
        assert!(m.on_bound(ChannelId(43), addr(5)).is_empty());
        assert_eq!(
            m.on_bound(CH, addr(5)),
            vec![Action::Confirmed { addr: addr(5) }]
        );
        assert_eq!(m.transport(), Transport::FastPath);
        // No more resends; the same address again is no news.
        assert!(m.poll(ms(t0, 2000)).is_empty());
        assert!(m.on_bound(CH, addr(5)).is_empty());
        // A NAT moved us: still bound, at the new address.
        assert_eq!(
            m.on_bound(CH, addr(6)),
            vec![Action::Confirmed { addr: addr(6) }]
        );
    }

    #[test]
    fn gives_up_at_the_bind_timeout_and_takes_a_late_confirmation() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let mut sends = 0;
        let (t, fallback) = loop {
            let t = m.next_deadline();
            let acts = m.poll(t);
            if let Some(Action::Fallback { reason }) = acts.first() {
                break (t, reason.clone());
            }
            sends += acts.iter().filter(|a| **a == Action::SendBind).count();
        };
        assert_eq!(t, ms(t0, 1000));
        assert_eq!(sends, 3, "resends at 100, 300, 700 ms");
        assert!(fallback.contains("1000 ms"), "{fallback}");
        assert_eq!(m.transport(), Transport::Quic);
        // The retry's ticket came; a late word (for either socket) counts.
        m.on_ticket(ms(t0, 1001));
        assert_eq!(
            m.on_bound(CH, addr(7)),
            vec![Action::Confirmed { addr: addr(7) }]
        );
        assert_eq!(m.transport(), Transport::FastPath);
    }

    #[test]
    fn the_first_timeout_retries_at_once_from_a_new_socket() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let acts = m.poll(ms(t0, 1000));
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert_eq!(acts[1..], [Action::NewSocket, Action::RequestTicket]);
        assert_eq!(m.next_deadline(), ms(t0, 6000), "the ticket wait");
        assert_eq!(m.on_ticket(ms(t0, 1001)), vec![Action::SendBind]);
        // Its failure is quiet, and the next try waits for the refresh period.
        let quiet: Vec<_> = (0..4)
            .flat_map(|_| {
                let t = m.next_deadline();
                m.poll(t)
            })
            .filter(|a| *a != Action::SendBind)
            .collect();
        assert!(quiet.is_empty(), "{quiet:?}");
        assert_eq!(m.next_deadline(), ms(t0, 11_000));
        // A late confirmation of either socket still counts.
        assert_eq!(
            m.on_bound(CH, addr(4)),
            vec![Action::Confirmed { addr: addr(4) }]
        );
    }

    #[test]
    fn after_a_timeout_each_refresh_retries_quietly_from_a_new_socket() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let acts = m.poll(ms(t0, 1000));
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert_eq!(acts[1..], [Action::NewSocket, Action::RequestTicket]);
        // No ticket in time: a quiet failure.
        assert!(m.poll(ms(t0, 6000)).is_empty());
        // A refresh later: new socket, fresh ticket, BIND with backoff.
        assert_eq!(
            m.poll(ms(t0, 11_000)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        assert_eq!(m.on_ticket(ms(t0, 11_010)), vec![Action::SendBind]);
        assert_eq!(m.poll(ms(t0, 11_110)), vec![Action::SendBind]);
        // It fails too: no second Fallback event, and the next refresh tries again.
        assert!(m.poll(ms(t0, 12_010)).is_empty());
        assert_eq!(m.transport(), Transport::Quic);
        assert_eq!(
            m.poll(ms(t0, 21_000)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        // No ticket this time: still quiet, still retrying later.
        assert!(m.on_ticket_unavailable().is_empty());
        assert_eq!(
            m.poll(ms(t0, 31_000)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        m.on_ticket(ms(t0, 31_001));
        // This one gets through.
        assert_eq!(
            m.on_bound(CH, addr(8)),
            vec![Action::Confirmed { addr: addr(8) }]
        );
        assert_eq!(m.transport(), Transport::FastPath);
        assert_eq!(m.poll(ms(t0, 41_000)), vec![Action::RequestTicket]);
    }

    #[test]
    fn a_socket_error_falls_back_at_once_and_stops_trying() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let acts = m.on_socket_error("connection refused".into());
        assert_eq!(
            acts,
            vec![Action::Fallback {
                reason: "connection refused".into()
            }]
        );
        assert!(m.on_socket_error("again".into()).is_empty());
        assert!(m.poll(ms(t0, 1000)).is_empty(), "no resend after an error");
        assert!(m.poll(ms(t0, 10_000)).is_empty(), "no refresh either");
        assert!(m.on_ticket(ms(t0, 10_001)).is_empty());
        assert_eq!(m.transport(), Transport::Quic);
    }

    #[test]
    fn refreshes_while_bound() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.on_bound(CH, addr(5));
        assert_eq!(m.next_deadline(), ms(t0, 10_000));
        assert_eq!(m.poll(ms(t0, 10_000)), vec![Action::RequestTicket]);
        assert_eq!(m.next_deadline(), ms(t0, 20_000));
        assert_eq!(m.on_ticket(ms(t0, 10_010)), vec![Action::SendBind]);
        assert_eq!(m.transport(), Transport::FastPath);
        // A failed refresh keeps the binding.
        assert!(m.on_ticket_unavailable().is_empty());
        assert_eq!(m.transport(), Transport::FastPath);
    }

    #[test]
    fn rebind_waits_for_a_ticket_then_binds_and_reports() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.on_bound(CH, addr(5));
        assert_eq!(
            m.rebind(ms(t0, 50)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        assert_eq!(m.transport(), Transport::Quic);
        // A late word about the old socket while we move changes nothing.
        assert!(m.on_bound(CH, addr(8)).is_empty());
        assert_eq!(m.on_ticket(ms(t0, 60)), vec![Action::SendBind]);
        assert_eq!(m.poll(ms(t0, 160)), vec![Action::SendBind]);
        assert_eq!(
            m.on_bound(CH, addr(9)),
            vec![
                Action::Confirmed { addr: addr(9) },
                Action::RebindDone(Ok(()))
            ]
        );
        assert_eq!(m.transport(), Transport::FastPath);
    }

    #[test]
    fn rebind_failures_are_reported_once() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.on_bound(CH, addr(5));
        m.rebind(t0);
        let acts = m.on_ticket_unavailable();
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert!(matches!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Unavailable(_)))
        ));

        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.rebind(t0);
        let acts = m.poll(ms(t0, 5000));
        assert_eq!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Timeout("a fresh fast-path ticket")))
        );

        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.rebind(t0);
        m.on_ticket(t0);
        let acts = m.poll(ms(t0, 1000));
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert_eq!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Timeout(
                "the fast-path bind confirmation"
            )))
        );
        assert!(m.poll(ms(t0, 1001)).is_empty());

        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.rebind(t0);
        m.on_ticket(t0);
        let acts = m.on_socket_error("refused".into());
        assert_eq!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Unavailable("refused".into())))
        );
    }

    #[test]
    fn fast_path_media_becomes_a_quic_media_datagram() {
        let mut d = BytesMut::new();
        d.extend_from_slice(
            &FastPathHeader::new(PacketType::Media(MediaKind::Screen), ChannelId(77)).to_bytes(),
        );
        d.extend_from_slice(b"body");
        let q = to_media_datagram(d).unwrap();
        assert_eq!(&q[..], &[1, 3, b'b', b'o', b'd', b'y']);
        let (h, body) = MediaHeader::parse(&q).unwrap();
        assert_eq!(h.kind, MediaKind::Screen);
        assert_eq!(body, b"body");

        let bind = FastPathHeader::new(PacketType::Bind, ChannelId(77)).to_bytes();
        assert_eq!(to_media_datagram(BytesMut::from(&bind[..])), None);
        assert_eq!(to_media_datagram(BytesMut::from(&[1u8, 2, 3][..])), None);
        assert_eq!(to_media_datagram(BytesMut::from(&[9u8; 12][..])), None);
        assert_eq!(
            fast_piece_to_quic(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 5]).as_deref(),
            Some(&[1u8, 1, 5][..])
        );
    }
}
