//! The raw-UDP fast path's wire formats: the relay header, the bind ticket and the BIND packet.
//!
//! Owns the bytes and their checks: parsing and writing the fast-path header (never
//! allocating, never panicking), and minting and verifying bind tickets (HMAC-SHA256 under a
//! relay-held key, truncated to 16 bytes). It does not own the channel table, the binding
//! rules (which ticket may replace which binding), sockets or clocks: the relay decides those
//! and callers pass `now`. The payload after the header is the SDK's opaque E2EE bytes.
//!
//! # Wire layout (all integers big-endian)
//!
//! Every fast-path datagram starts with the 10-byte header:
//!
//! ```text
//! 0        1        2                                 10
//! +--------+--------+---------------------------------+------------------------+
//! | ver=1  |  type  |        channel id (u64)         | payload ...            |
//! +--------+--------+---------------------------------+------------------------+
//! type: 1 audio, 2 video, 3 screen (media, payload = opaque E2EE bytes, forwarded unchanged)
//!       0x80 BIND (payload = one ticket, exactly TICKET_LEN bytes; never forwarded)
//! ```
//!
//! The bind ticket (54 bytes), minted by the control plane for one endpoint:
//!
//! ```text
//! 0       1        2              10             18        22                 38        54
//! +-------+--------+--------------+--------------+---------+------------------+---------+
//! | tv=1  | family | channel u64  | expires u64  | seq u32 | ip (16 bytes)    | mac[16] |
//! +-------+--------+--------------+--------------+---------+------------------+---------+
//! family: 4 (ip = 4 address bytes then 12 zero bytes) or 6 (16 address bytes)
//! expires: Unix seconds; the ticket is refused from this second on
//! mac: HMAC-SHA256(key, "duet-fastpath-ticket-v1" || bytes 0..38), first 16 bytes
//! ```
//!
//! A BIND packet is `header(type = BIND, channel) | ticket`: exactly [`BIND_PACKET_LEN`] = 64
//! bytes, and the ticket's channel must equal the header's. The ticket names the endpoint's
//! IP address as the control plane saw it; the port is not in it (NATs rewrite ports), so the
//! relay binds the packet's full source address and a later move to a new address needs a
//! ticket with a higher `seq`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_lc_rs::{constant_time, hmac};

use serde::{Deserialize, Serialize};

use crate::media::MediaKind;

/// A fast-path channel: the relay's name for one endpoint's place on the fast path, carried
/// in every fast-path header. Its bits are the relay's business (a table index and a
/// generation, so a stale id from a released channel never matches a new one); endpoints
/// only copy it from their offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(pub u64);

impl ChannelId {
    #[inline]
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    #[inline]
    pub fn from_be_bytes(b: [u8; 8]) -> Self {
        Self(u64::from_be_bytes(b))
    }
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Wire version of the fast-path header.
pub const FASTPATH_VERSION: u8 = 1;
/// Bytes of header before the payload.
pub const FASTPATH_HEADER_LEN: usize = 10;
/// The header's type byte for a BIND packet.
pub const BIND_TYPE: u8 = 0x80;
/// Version byte of the ticket layout.
pub const TICKET_VERSION: u8 = 1;
/// Bytes of a ticket, MAC included.
pub const TICKET_LEN: usize = 54;
/// Bytes of the ticket covered by the MAC.
const TICKET_SIGNED_LEN: usize = 38;
/// Bytes of the truncated MAC.
pub const TICKET_MAC_LEN: usize = 16;
/// A BIND packet: header then ticket, nothing else.
pub const BIND_PACKET_LEN: usize = FASTPATH_HEADER_LEN + TICKET_LEN;
/// Shortest fast-path key accepted, bytes.
pub const MIN_FASTPATH_KEY_LEN: usize = 32;
const MAC_LABEL: &[u8] = b"duet-fastpath-ticket-v1";

/// What a fast-path datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Media to forward, unchanged, to the channel's peer.
    Media(MediaKind),
    /// A bind request carrying a ticket; the relay never forwards or answers it.
    Bind,
}

impl PacketType {
    #[inline]
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            BIND_TYPE => Some(Self::Bind),
            b => MediaKind::from_u8(b).map(Self::Media),
        }
    }

    #[inline]
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Media(k) => k as u8,
            Self::Bind => BIND_TYPE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FastPathHeaderError {
    #[error("datagram of {0} bytes is shorter than the fast-path header")]
    Truncated(usize),
    #[error("unsupported fast-path header version {0}")]
    Version(u8),
    #[error("unknown fast-path packet type {0}")]
    Type(u8),
}

impl FastPathHeaderError {
    /// Stable metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated(_) => "truncated",
            Self::Version(_) => "bad_version",
            Self::Type(_) => "bad_type",
        }
    }
}

/// The fast-path header. Layout: `version: u8 | type: u8 | channel: u64 BE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPathHeader {
    pub ty: PacketType,
    pub channel: ChannelId,
}

impl FastPathHeader {
    pub fn new(ty: PacketType, channel: ChannelId) -> Self {
        Self { ty, channel }
    }

    /// Parses the header at the front of `datagram`; returns it and the payload.
    /// Never allocates, never panics: this runs once per packet on the fast path.
    #[inline]
    pub fn parse(datagram: &[u8]) -> Result<(Self, &[u8]), FastPathHeaderError> {
        let Some((head, payload)) = datagram.split_first_chunk::<FASTPATH_HEADER_LEN>() else {
            return Err(FastPathHeaderError::Truncated(datagram.len()));
        };
        let [version, ty, c @ ..] = *head;
        if version != FASTPATH_VERSION {
            return Err(FastPathHeaderError::Version(version));
        }
        let ty = PacketType::from_u8(ty).ok_or(FastPathHeaderError::Type(ty))?;
        Ok((
            Self {
                ty,
                channel: ChannelId::from_be_bytes(c),
            },
            payload,
        ))
    }

    pub fn to_bytes(self) -> [u8; FASTPATH_HEADER_LEN] {
        let mut out = [0u8; FASTPATH_HEADER_LEN];
        out[0] = FASTPATH_VERSION;
        out[1] = self.ty.to_u8();
        out[2..].copy_from_slice(&self.channel.to_be_bytes());
        out
    }

    /// Writes the header to the front of `out`; returns the bytes written, or `None` when
    /// `out` is shorter than the header.
    #[inline]
    pub fn write(self, out: &mut [u8]) -> Option<usize> {
        let dst = out.first_chunk_mut::<FASTPATH_HEADER_LEN>()?;
        *dst = self.to_bytes();
        Some(FASTPATH_HEADER_LEN)
    }
}

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket is malformed: {0}")]
    Malformed(&'static str),
    #[error("ticket MAC does not verify")]
    BadMac,
    #[error("ticket expired at {expires} (now {now})")]
    Expired { expires: u64, now: u64 },
    #[error("ticket names another address than the packet's source")]
    WrongAddress,
}

impl TicketError {
    /// Stable metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(_) => "bad_ticket",
            Self::BadMac => "bad_mac",
            Self::Expired { .. } => "ticket_expired",
            Self::WrongAddress => "wrong_address",
        }
    }
}

/// The relay-held HMAC-SHA256 key tickets are minted and verified with.
#[derive(Clone)]
pub struct FastPathKey {
    key: hmac::Key,
}

impl std::fmt::Debug for FastPathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastPathKey(..)")
    }
}

impl FastPathKey {
    /// `secret` must be at least [`MIN_FASTPATH_KEY_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, TicketError> {
        if secret.len() < MIN_FASTPATH_KEY_LEN {
            return Err(TicketError::Malformed("key shorter than 32 bytes"));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    fn mac(&self, signed: &[u8; TICKET_SIGNED_LEN]) -> [u8; TICKET_MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(MAC_LABEL);
        ctx.update(signed);
        let tag = ctx.sign();
        let mut out = [0u8; TICKET_MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..TICKET_MAC_LEN]);
        out
    }
}

/// What a bind ticket grants: this endpoint, at this IP, may bind `channel` until
/// `expires_unix`; `seq` orders an endpoint's tickets (a re-bind from a new address needs a
/// higher one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPathTicket {
    pub channel: ChannelId,
    /// The endpoint's address as the control plane saw it.
    pub ip: IpAddr,
    /// Unix seconds; refused from this second on.
    pub expires_unix: u64,
    pub seq: u32,
}

impl FastPathTicket {
    fn signed_bytes(&self) -> [u8; TICKET_SIGNED_LEN] {
        let mut b = [0u8; TICKET_SIGNED_LEN];
        b[0] = TICKET_VERSION;
        b[2..10].copy_from_slice(&self.channel.to_be_bytes());
        b[10..18].copy_from_slice(&self.expires_unix.to_be_bytes());
        b[18..22].copy_from_slice(&self.seq.to_be_bytes());
        match self.ip.to_canonical() {
            IpAddr::V4(v4) => {
                b[1] = 4;
                b[22..26].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                b[1] = 6;
                b[22..38].copy_from_slice(&v6.octets());
            }
        }
        b
    }

    /// Mints the ticket's bytes under `key`.
    pub fn encode(&self, key: &FastPathKey) -> [u8; TICKET_LEN] {
        let signed = self.signed_bytes();
        let mut out = [0u8; TICKET_LEN];
        out[..TICKET_SIGNED_LEN].copy_from_slice(&signed);
        out[TICKET_SIGNED_LEN..].copy_from_slice(&key.mac(&signed));
        out
    }

    /// Verifies `bytes` under `key` for a packet from `src_ip` at `now_unix`: layout, then
    /// MAC (constant time), then expiry, then address. Never allocates, never panics.
    pub fn verify(
        bytes: &[u8],
        key: &FastPathKey,
        src_ip: IpAddr,
        now_unix: u64,
    ) -> Result<Self, TicketError> {
        let bytes: &[u8; TICKET_LEN] = bytes
            .try_into()
            .map_err(|_| TicketError::Malformed("wrong length"))?;
        let (signed, mac) = bytes.split_at(TICKET_SIGNED_LEN);
        let signed: &[u8; TICKET_SIGNED_LEN] = signed
            .try_into()
            .map_err(|_| TicketError::Malformed("wrong length"))?;
        if signed[0] != TICKET_VERSION {
            return Err(TicketError::Malformed("unknown ticket version"));
        }
        let expected = key.mac(signed);
        constant_time::verify_slices_are_equal(&expected, mac).map_err(|_| TicketError::BadMac)?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&signed[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&signed[18..22]);
        let ip = match signed[1] {
            4 => {
                if signed[26..38].iter().any(|&b| b != 0) {
                    return Err(TicketError::Malformed("IPv4 ticket with non-zero padding"));
                }
                let mut a = [0u8; 4];
                a.copy_from_slice(&signed[22..26]);
                IpAddr::V4(Ipv4Addr::from(a))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&signed[22..38]);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(TicketError::Malformed("unknown address family")),
        };
        let ticket = Self {
            channel: ChannelId(u64_at(2)),
            ip,
            expires_unix: u64_at(10),
            seq: u32::from_be_bytes(seq),
        };
        if ticket.expires_unix <= now_unix {
            return Err(TicketError::Expired {
                expires: ticket.expires_unix,
                now: now_unix,
            });
        }
        if ticket.ip.to_canonical() != src_ip.to_canonical() {
            return Err(TicketError::WrongAddress);
        }
        Ok(ticket)
    }

    /// The whole BIND packet for this ticket: header (type BIND, the ticket's channel), ticket.
    pub fn bind_packet(&self, key: &FastPathKey) -> [u8; BIND_PACKET_LEN] {
        write_bind(self.channel, &self.encode(key))
    }
}

/// The BIND datagram for `channel` carrying `ticket` as the control plane gave it (an
/// endpoint has the ticket's bytes, not the key). `None` unless `ticket` is `TICKET_LEN` bytes.
pub fn bind_packet_from(channel: ChannelId, ticket: &[u8]) -> Option<[u8; BIND_PACKET_LEN]> {
    ticket.try_into().ok().map(|t| write_bind(channel, t))
}

fn write_bind(channel: ChannelId, ticket: &[u8; TICKET_LEN]) -> [u8; BIND_PACKET_LEN] {
    let mut out = [0u8; BIND_PACKET_LEN];
    out[..FASTPATH_HEADER_LEN]
        .copy_from_slice(&FastPathHeader::new(PacketType::Bind, channel).to_bytes());
    out[FASTPATH_HEADER_LEN..].copy_from_slice(ticket);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> FastPathKey {
        FastPathKey::new(&[7u8; 32]).unwrap()
    }

    fn ticket() -> FastPathTicket {
        FastPathTicket {
            channel: ChannelId(0x0102_0304_0506_0708),
            ip: "192.0.2.7".parse().unwrap(),
            expires_unix: 1_000,
            seq: 3,
        }
    }

    #[test]
    fn header_layout_is_stable() {
        let h = FastPathHeader::new(
            PacketType::Media(MediaKind::Video),
            ChannelId(0x0102_0304_0506_0708),
        );
        assert_eq!(h.to_bytes(), [1, 2, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut buf = [0u8; 12];
        assert_eq!(h.write(&mut buf), Some(10));
        assert_eq!(h.write(&mut buf[..9]), None);
        let (p, rest) = FastPathHeader::parse(&buf).unwrap();
        assert_eq!(p, h);
        assert_eq!(rest, &[0, 0]);
    }

    #[test]
    fn header_rejects_bad_input() {
        use FastPathHeaderError::*;
        assert_eq!(FastPathHeader::parse(&[1; 9]), Err(Truncated(9)));
        assert_eq!(
            FastPathHeader::parse(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Version(2))
        );
        assert_eq!(
            FastPathHeader::parse(&[1, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Type(4))
        );
        assert_eq!(
            FastPathHeader::parse(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Type(0))
        );
        let (b, _) = FastPathHeader::parse(&[1, 0x80, 0, 0, 0, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(b, FastPathHeader::new(PacketType::Bind, ChannelId(9)));
    }

    #[test]
    fn ticket_roundtrip_and_each_refusal() {
        let k = key();
        let t = ticket();
        let bytes = t.encode(&k);
        assert_eq!(FastPathTicket::verify(&bytes, &k, t.ip, 999), Ok(t));
        assert_eq!(
            FastPathTicket::verify(&bytes, &k, t.ip, 1_000),
            Err(TicketError::Expired {
                expires: 1_000,
                now: 1_000
            })
        );
        assert_eq!(
            FastPathTicket::verify(&bytes, &k, "192.0.2.8".parse().unwrap(), 1),
            Err(TicketError::WrongAddress)
        );
        // A v4-mapped source (dual-stack socket) is the same address.
        assert_eq!(
            FastPathTicket::verify(&bytes, &k, "::ffff:192.0.2.7".parse().unwrap(), 1),
            Ok(t)
        );
        let other = FastPathKey::new(&[8u8; 32]).unwrap();
        assert_eq!(
            FastPathTicket::verify(&bytes, &other, t.ip, 1),
            Err(TicketError::BadMac)
        );
        for i in 0..TICKET_LEN {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert!(
                FastPathTicket::verify(&bad, &k, t.ip, 1).is_err(),
                "byte {i}"
            );
        }
        assert!(matches!(
            FastPathTicket::verify(&bytes[..53], &k, t.ip, 1),
            Err(TicketError::Malformed(_))
        ));
        assert!(FastPathKey::new(&[0u8; 31]).is_err());
        let v6 = FastPathTicket {
            ip: "2001:db8::1".parse().unwrap(),
            ..t
        };
        assert_eq!(FastPathTicket::verify(&v6.encode(&k), &k, v6.ip, 1), Ok(v6));
    }

    #[test]
    fn bind_packet_is_header_then_ticket() {
        let k = key();
        let t = ticket();
        let p = t.bind_packet(&k);
        assert_eq!(p.len(), BIND_PACKET_LEN);
        let (h, rest) = FastPathHeader::parse(&p).unwrap();
        assert_eq!(h, FastPathHeader::new(PacketType::Bind, t.channel));
        assert_eq!(FastPathTicket::verify(rest, &k, t.ip, 0), Ok(t));
    }

    proptest! {
        #[test]
        fn header_roundtrips(ty in prop_oneof![Just(BIND_TYPE), 1u8..=3], channel in any::<u64>(),
                             payload in proptest::collection::vec(any::<u8>(), 0..32)) {
            let h = FastPathHeader::new(PacketType::from_u8(ty).unwrap(), ChannelId(channel));
            let mut d = h.to_bytes().to_vec();
            d.extend_from_slice(&payload);
            let (p, rest) = FastPathHeader::parse(&d).unwrap();
            prop_assert_eq!(p, h);
            prop_assert_eq!(rest, &payload[..]);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok((h, payload)) = FastPathHeader::parse(&data) {
                let mut again = h.to_bytes().to_vec();
                again.extend_from_slice(payload);
                prop_assert_eq!(again, data.clone());
            }
            let k = key();
            let _ = FastPathTicket::verify(&data, &k, "192.0.2.7".parse().unwrap(), 5);
            if data.len() >= FASTPATH_HEADER_LEN {
                let _ = FastPathTicket::verify(&data[FASTPATH_HEADER_LEN..], &k, "::1".parse().unwrap(), 5);
            }
        }

        #[test]
        fn ticket_roundtrips(channel in any::<u64>(), ip in any::<[u8; 4]>(), exp in 1u64.., seq in any::<u32>()) {
            let k = key();
            let t = FastPathTicket { channel: ChannelId(channel), ip: IpAddr::from(ip), expires_unix: exp, seq };
            prop_assert_eq!(FastPathTicket::verify(&t.encode(&k), &k, t.ip, exp - 1), Ok(t));
        }
    }
}
