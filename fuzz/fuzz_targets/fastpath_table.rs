//! The relay's fast-path channel table (`duet_relay::fastpath::ChannelTable`) as a hostile
//! network and a busy control plane drive it: the input is a sequence of operations that
//! allocate and release channel pairs, bind channels with genuine tickets (from any of five
//! sources, any seq, expired or for another address), unbind, send media on any channel
//! from any source, and send arbitrary datagrams. `fastpath_packet` covers only the parsers;
//! this covers the table's binding, source and routing rules.
//!
//! After every operation the table must agree with a model of the rules: a bind takes a
//! channel with no binding, refreshes from the same address, moves only for a higher seq;
//! a released pair's ids match nothing; media is forwarded only from a channel's bound
//! address and only to its peer's bound address (else bridged, or dropped for the reason
//! the model gives); a datagram that is not a genuine ticket never binds. Never panics.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use duet_proto::fastpath::{FastPathHeader, FastPathKey, FastPathTicket, PacketType};
use duet_proto::{ChannelId, MediaKind};
use duet_relay::fastpath::table::{BindOutcome, ChannelTable, Verdict};
use duet_relay::forward::{DropReason, MediaLimits};
use libfuzzer_sys::fuzz_target;

const CAPACITY: u32 = 3;
const NOW_UNIX: u64 = 1_000_000;
/// Same IP twice (a NAT moving the port), another IPv4, IPv6, and an address no ticket names.
const SRCS: [SocketAddr; 5] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 1000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 1001),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 1000),
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 9),
];

/// The model of one channel's binding: `None` never bound; `(None, seq)` unbound.
type Binding = Option<(Option<SocketAddr>, u32)>;

struct Pair {
    ids: [ChannelId; 2],
    live: bool,
    bind: [Binding; 2],
}

struct Model {
    pairs: Vec<Pair>,
}

impl Model {
    fn find(&self, ch: ChannelId) -> Option<(usize, usize)> {
        let i = self
            .pairs
            .iter()
            .rposition(|p| p.live && p.ids.contains(&ch))?;
        Some((i, usize::from(self.pairs[i].ids[1] == ch)))
    }
    fn live(&self) -> usize {
        self.pairs.iter().filter(|p| p.live).count()
    }
    fn pick(&self, b: u8) -> Option<usize> {
        (!self.pairs.is_empty()).then(|| usize::from(b) % self.pairs.len())
    }

    /// What a media packet on `ch` from `src` must get.
    fn media(
        &self,
        ch: ChannelId,
        src: SocketAddr,
        kind: MediaKind,
    ) -> Result<Verdict, DropReason> {
        let Some((i, side)) = self.find(ch) else {
            return Err(DropReason::UnknownChannel);
        };
        let p = &self.pairs[i];
        match p.bind[side] {
            Some((Some(a), _)) if a == src => {}
            Some((Some(_), _)) => return Err(DropReason::SpoofedSource),
            _ => return Err(DropReason::Unbound),
        }
        Ok(match p.bind[side ^ 1] {
            Some((Some(a), _)) => Verdict::Forward(a),
            _ => Verdict::Bridge {
                peer_channel: p.ids[side ^ 1],
                kind,
            },
        })
    }

    /// What a genuine, unexpired ticket for `ch`, `seq`, from `src` (its own IP) must do,
    /// and the model's state after it.
    fn bind(
        &mut self,
        ch: ChannelId,
        src: SocketAddr,
        seq: u32,
    ) -> Result<BindOutcome, DropReason> {
        let Some((i, side)) = self.find(ch) else {
            return Err(DropReason::UnknownChannel);
        };
        let b = &mut self.pairs[i].bind[side];
        let (r, next) = match *b {
            None => (Ok(BindOutcome::New), (Some(src), seq)),
            Some((Some(a), s)) if a == src => (Ok(BindOutcome::Refreshed), (Some(a), s.max(seq))),
            Some((addr, s)) if seq > s => (
                Ok(if addr.is_some() {
                    BindOutcome::Moved
                } else {
                    BindOutcome::New
                }),
                (Some(src), seq),
            ),
            Some(cur) => (Err(DropReason::StaleTicket), cur),
        };
        *b = Some(next);
        r
    }
}

fn media_packet(kind: MediaKind, ch: ChannelId, len: usize) -> Vec<u8> {
    let mut v = FastPathHeader::new(PacketType::Media(kind), ch)
        .to_bytes()
        .to_vec();
    v.resize(v.len() + len, 0x5a);
    v
}

fn bind_packet(key: &FastPathKey, ch: ChannelId, ip: IpAddr, seq: u32, expires: u64) -> Vec<u8> {
    let t = FastPathTicket {
        channel: ch,
        ip,
        expires_unix: expires,
        seq,
    };
    t.bind_packet(key).to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Ok(key) = FastPathKey::new(&[7u8; 32]) else {
        return;
    };
    let table = ChannelTable::new(CAPACITY, key.clone());
    let limits = MediaLimits {
        packets_per_sec: 1_000_000,
        bytes_per_sec: 1_000_000_000,
    };
    let now = Instant::now();
    let mut m = Model { pairs: Vec::new() };
    let mut input = data.iter().copied();
    let mut next = || input.next();

    while let Some(op) = next() {
        let (a, b, c) = (
            next().unwrap_or(0),
            next().unwrap_or(0),
            next().unwrap_or(0),
        );
        let src = SRCS[usize::from(b) % SRCS.len()];
        // A channel of a pair seen so far (live or released), or a random-looking id.
        let channel = |m: &Model| match m.pick(a) {
            Some(i) => m.pairs[i].ids[usize::from(c & 1)],
            None => ChannelId(u64::from(a) << 32 | u64::from(c)),
        };
        // The low six bits pick the operation; 0x40 and 0x80 are flags of a bind.
        match (op & 0x3f) % 6 {
            0 => match table.allocate(limits) {
                Some(ids) => {
                    assert!(m.live() < CAPACITY as usize, "allocated past capacity");
                    assert!(
                        m.pairs
                            .iter()
                            .all(|p| !p.ids.contains(&ids[0]) && !p.ids.contains(&ids[1])),
                        "an id came back"
                    );
                    m.pairs.push(Pair {
                        ids,
                        live: true,
                        bind: [None, None],
                    });
                }
                None => assert_eq!(m.live(), CAPACITY as usize, "refused with room"),
            },
            1 => {
                let ch = channel(&m);
                let want = m.find(ch).map(|(i, _)| i);
                assert_eq!(table.release(ch), want.is_some());
                if let Some(i) = want {
                    m.pairs[i].live = false;
                }
            }
            2 => {
                let ch = channel(&m);
                let seq = u32::from(c >> 1);
                // Mostly the source's own IP; sometimes another, sometimes expired.
                let ip = if op & 0x40 != 0 {
                    SRCS[usize::from(a) % SRCS.len()].ip()
                } else {
                    src.ip()
                };
                let expires = if op & 0x80 != 0 {
                    NOW_UNIX
                } else {
                    NOW_UNIX + 60
                };
                let got =
                    table.process(src, &bind_packet(&key, ch, ip, seq, expires), now, NOW_UNIX);
                if ip != src.ip() || expires <= NOW_UNIX {
                    assert!(
                        got.is_err(),
                        "bound with a ticket for {ip} expiring {expires}: {got:?}"
                    );
                } else {
                    let want = m.bind(ch, src, seq).map(|outcome| Verdict::Bound {
                        channel: ch,
                        outcome,
                    });
                    assert_eq!(got, want, "bind {ch:?} from {src} seq {seq}");
                }
            }
            3 => {
                let ch = channel(&m);
                let kind = MediaKind::ALL[usize::from(c) % MediaKind::ALL.len()];
                let got =
                    table.process(src, &media_packet(kind, ch, usize::from(c)), now, NOW_UNIX);
                assert_eq!(got, m.media(ch, src, kind), "media {ch:?} from {src}");
            }
            4 => {
                let ch = channel(&m);
                let want = match m.find(ch) {
                    Some((i, side)) => match m.pairs[i].bind[side] {
                        Some((Some(_), seq)) => {
                            m.pairs[i].bind[side] = Some((None, seq));
                            true
                        }
                        _ => false,
                    },
                    None => false,
                };
                assert_eq!(table.unbind(ch), want, "unbind {ch:?}");
            }
            _ => {
                // Arbitrary bytes: the next `a % 96` bytes of the input, as a datagram.
                let n = usize::from(a) % 96;
                let bytes: Vec<u8> = (0..n).map_while(|_| next()).collect();
                let got = table.process(src, &bytes, now, NOW_UNIX);
                match FastPathHeader::parse(&bytes) {
                    Err(_) => assert!(got.is_err()),
                    Ok((h, _)) => match h.ty {
                        // Not a ticket minted under the key: it binds nothing.
                        PacketType::Bind => assert!(got.is_err(), "forged bind: {got:?}"),
                        PacketType::Media(kind) => assert_eq!(got, m.media(h.channel, src, kind)),
                    },
                }
            }
        }
        for p in &m.pairs {
            for side in 0..2 {
                let want = if p.live {
                    p.bind[side].and_then(|(a, _)| a)
                } else {
                    None
                };
                assert_eq!(
                    table.bound_addr(p.ids[side]),
                    want,
                    "binding of {:?}",
                    p.ids[side]
                );
            }
        }
    }
});
