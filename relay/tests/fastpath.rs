//! The raw-UDP fast path end to end, over real loopback sockets: a relay task, two endpoints
//! each with a QUIC control connection (for `Joined`, tickets and confirmations) and a plain
//! UDP socket for media.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use duet_proto::fastpath::{FastPathHeader, PacketType, FASTPATH_HEADER_LEN};
use duet_proto::{
    ClientMessage, FastPathOffer, Joined, MediaHeader, MediaKind, RefusalReason, RelayMessage,
};
use duet_testkit::{metric, scrape, wait_metric, Raw, RelayUnderTest, TestRelay, STEP};
use tokio::net::UdpSocket;

/// One endpoint: its control connection, its offer and its UDP socket.
struct Endpoint {
    ctl: Raw,
    offer: FastPathOffer,
    udp: UdpSocket,
}

impl Endpoint {
    async fn join(relay: &TestRelay, session: &str, user: &str) -> Result<Endpoint> {
        let (ctl, joined) = Raw::join(relay, session, user, "d1").await?;
        let offer = offer_of(&joined)?;
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        Ok(Endpoint { ctl, offer, udp })
    }

    fn target(&self) -> SocketAddr {
        self.offer.target(self.ctl.conn.remote_address())
    }

    async fn send_bind(&self, offer: &FastPathOffer) -> Result<()> {
        let pkt = offer.bind_packet().context("ticket length")?;
        self.udp.send_to(&pkt, self.target()).await?;
        Ok(())
    }

    /// Sends BIND and waits for the relay's confirmation on the control stream.
    async fn bind(&mut self) -> Result<SocketAddr> {
        let offer = self.offer.clone();
        self.send_bind(&offer).await?;
        self.bound().await
    }

    async fn bound(&mut self) -> Result<SocketAddr> {
        loop {
            match self.ctl.next().await? {
                Some(RelayMessage::FastPathBound { channel, addr }) => {
                    assert_eq!(channel, self.offer.channel);
                    return Ok(addr);
                }
                Some(_) => continue,
                None => bail!("control stream ended before FastPathBound"),
            }
        }
    }

    /// Asks for a fresh ticket; returns the new offer.
    async fn fresh_offer(&mut self) -> Result<FastPathOffer> {
        self.ctl.send_msg(&ClientMessage::FastPathTicket).await?;
        loop {
            match self.ctl.next().await? {
                Some(RelayMessage::FastPathTicket(o)) => return Ok(o),
                Some(RelayMessage::Dropped(r)) => bail!("ticket refused: {r}"),
                Some(_) => continue,
                None => bail!("control stream ended"),
            }
        }
    }

    fn media(&self, kind: MediaKind, body: &[u8]) -> Vec<u8> {
        fast_path_packet(kind, self.offer.channel, body)
    }
}

fn offer_of(j: &Joined) -> Result<FastPathOffer> {
    j.fast_path
        .clone()
        .context("Joined carries no fast-path offer")
}

fn fast_path_packet(kind: MediaKind, channel: duet_proto::ChannelId, body: &[u8]) -> Vec<u8> {
    let mut v = FastPathHeader::new(PacketType::Media(kind), channel)
        .to_bytes()
        .to_vec();
    v.extend_from_slice(body);
    v
}

async fn recv(udp: &UdpSocket) -> Result<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(STEP, udp.recv_from(&mut buf))
        .await
        .context("timed out waiting for a fast-path packet")??;
    buf.truncate(n);
    Ok((buf, from))
}

/// Asserts nothing at all arrives on `udp` for a while: no reflection, no answer.
async fn assert_silent(udp: &UdpSocket) {
    let mut buf = [0u8; 4096];
    let got = tokio::time::timeout(Duration::from_millis(300), udp.recv_from(&mut buf)).await;
    assert!(got.is_err(), "expected zero bytes, got {got:?}");
}

async fn pair(relay: &TestRelay, session: &str) -> Result<(Endpoint, Endpoint)> {
    let mut a = Endpoint::join(relay, session, "alice").await?;
    let mut b = Endpoint::join(relay, session, "bob").await?;
    assert_ne!(a.offer.channel, b.offer.channel);
    assert_eq!(a.bind().await?, a.udp.local_addr()?);
    assert_eq!(b.bind().await?, b.udp.local_addr()?);
    Ok((a, b))
}

#[tokio::test]
async fn joined_offers_the_fast_path_and_media_is_forwarded_byte_exact() -> Result<()> {
    let relay = TestRelay::start().await;
    let fp = relay
        .fast_path_addr()
        .context("fast path is on by default")?;
    let (a, b) = pair(&relay, "fp-exact").await?;
    assert_eq!(a.offer.port, fp.port());
    assert_eq!(a.target(), fp);
    assert_eq!(a.offer.ticket.len(), duet_proto::fastpath::TICKET_LEN);

    let mut sent = 0;
    for (i, len) in [0usize, 1, 150, 1180].into_iter().enumerate() {
        let body: Vec<u8> = (0..len).map(|j| (i * 37 + j * 11) as u8).collect();
        for (from, to, kind) in [
            (&a, &b, MediaKind::Audio),
            (&b, &a, MediaKind::Video),
            (&a, &b, MediaKind::Screen),
        ] {
            let p = from.media(kind, &body);
            from.udp.send_to(&p, from.target()).await?;
            let (got, src) = recv(&to.udp).await?;
            assert_eq!(got, p, "forwarded unchanged");
            assert_eq!(src, fp, "from the fast-path port");
            sent += 1;
        }
    }
    wait_metric(
        relay.ops_addr(),
        "duet_fastpath_forwarded_packets_total",
        sent as f64,
    )
    .await;
    let m = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(&m, "duet_fastpath_forwarded_packets_total"),
        sent as f64
    );
    assert_eq!(
        metric(&m, "duet_fastpath_binds_total{outcome=\"new\"}"),
        2.0
    );
    for k in ["audio", "video", "screen"] {
        let series = format!("duet_forwarded_packets_total{{kind=\"{k}\"}}");
        assert_eq!(metric(&m, &series), 0.0, "nothing went over QUIC");
    }
    // Neither endpoint ever got anything it did not ask its peer for.
    assert_silent(&a.udp).await;
    assert_silent(&b.udp).await;
    Ok(())
}

#[tokio::test]
async fn spoofed_unbound_and_forged_senders_get_zero_bytes_and_are_counted() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = pair(&relay, "fp-spoof").await?;
    let stranger = UdpSocket::bind("127.0.0.1:0").await?;
    let fp = a.target();

    // A stranger naming a's channel: dropped, nothing to anyone.
    stranger
        .send_to(&a.media(MediaKind::Audio, b"evil"), fp)
        .await?;
    // Garbage, a bad version, an unknown type, a channel never issued.
    stranger.send_to(b"\x01", fp).await?;
    let mut bad = a.media(MediaKind::Audio, b"x");
    bad[0] = 9;
    stranger.send_to(&bad, fp).await?;
    bad[0] = 1;
    bad[1] = 0x42;
    stranger.send_to(&bad, fp).await?;
    stranger
        .send_to(
            &fast_path_packet(
                MediaKind::Audio,
                duet_proto::ChannelId(0xdead_0000_0001),
                b"x",
            ),
            fp,
        )
        .await?;
    // a's ticket replayed from the stranger's socket (same IP, other port): the binding
    // stays with a, since the ticket is not newer.
    stranger
        .send_to(&a.offer.bind_packet().unwrap(), fp)
        .await?;
    // A ticket with a flipped MAC bit.
    let mut forged = a.offer.bind_packet().unwrap();
    forged[63] ^= 1;
    stranger.send_to(&forged, fp).await?;

    for (reason, n) in [
        ("spoofed_source", 1.0),
        ("truncated", 1.0),
        ("bad_version", 1.0),
        ("bad_type", 1.0),
        ("unknown_channel", 1.0),
        ("stale_ticket", 1.0),
        ("bad_mac", 1.0),
    ] {
        let series = format!("duet_fastpath_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(
            wait_metric(relay.ops_addr(), &series, n).await,
            n,
            "{series}"
        );
    }
    assert_silent(&stranger).await;
    assert_silent(&b.udp).await;
    assert_silent(&a.udp).await;
    assert_eq!(
        metric(
            &scrape(relay.ops_addr()).await,
            "duet_fastpath_forwarded_packets_total"
        ),
        0.0
    );
    Ok(())
}

#[tokio::test]
async fn rebinding_after_a_source_port_change_needs_a_fresh_ticket() -> Result<()> {
    let relay = TestRelay::start().await;
    let (mut a, b) = pair(&relay, "fp-rebind").await?;
    let old = std::mem::replace(&mut a.udp, UdpSocket::bind("127.0.0.1:0").await?);
    let fp = a.target();

    // The new port with the old ticket: refused, media from it dropped.
    a.send_bind(&a.offer.clone()).await?;
    wait_metric(
        relay.ops_addr(),
        "duet_fastpath_dropped_total{reason=\"stale_ticket\"}",
        1.0,
    )
    .await;
    a.udp
        .send_to(&a.media(MediaKind::Audio, b"too early"), fp)
        .await?;
    wait_metric(
        relay.ops_addr(),
        "duet_fastpath_dropped_total{reason=\"spoofed_source\"}",
        1.0,
    )
    .await;
    assert_silent(&b.udp).await;

    // A fresh ticket (higher seq) moves the binding.
    let fresh = a.fresh_offer().await?;
    assert_eq!(fresh.channel, a.offer.channel);
    assert_ne!(fresh.ticket, a.offer.ticket);
    a.send_bind(&fresh).await?;
    assert_eq!(a.bound().await?, a.udp.local_addr()?);
    assert_eq!(
        wait_metric(
            relay.ops_addr(),
            "duet_fastpath_binds_total{outcome=\"moved\"}",
            1.0
        )
        .await,
        1.0
    );
    let p = a.media(MediaKind::Video, b"from the new port");
    a.udp.send_to(&p, fp).await?;
    assert_eq!(recv(&b.udp).await?.0, p);
    let q = b.media(MediaKind::Video, b"to the new port");
    b.udp.send_to(&q, fp).await?;
    assert_eq!(recv(&a.udp).await?.0, q);
    // The old port is a stranger now.
    old.send_to(&a.media(MediaKind::Audio, b"old"), fp).await?;
    wait_metric(
        relay.ops_addr(),
        "duet_fastpath_dropped_total{reason=\"spoofed_source\"}",
        2.0,
    )
    .await;
    assert_silent(&b.udp).await;
    assert_silent(&old).await;
    Ok(())
}

#[tokio::test]
async fn an_expired_ticket_binds_nothing() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.fast_path.ticket_ttl_secs = 2).await;
    let mut a = Endpoint::join(&relay, "fp-expiry", "alice").await?;
    let until = a.offer.expires_unix;
    while duet_proto::clock::unix_now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.send_bind(&a.offer.clone()).await?;
    assert_eq!(
        wait_metric(
            relay.ops_addr(),
            "duet_fastpath_dropped_total{reason=\"ticket_expired\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_silent(&a.udp).await;
    // A fresh ticket works.
    let fresh = a.fresh_offer().await?;
    assert!(fresh.expires_unix > until);
    a.send_bind(&fresh).await?;
    assert_eq!(a.bound().await?, a.udp.local_addr()?);
    Ok(())
}

#[tokio::test]
async fn mixed_transports_are_bridged_both_ways() -> Result<()> {
    let relay = TestRelay::start().await;
    // a is on the fast path; b stays on QUIC datagrams.
    let mut a = Endpoint::join(&relay, "fp-mixed", "alice").await?;
    let (b, _) = Raw::join(&relay, "fp-mixed", "bob", "d1").await?;
    a.bind().await?;

    let body = b"sealed bytes from the fast path";
    a.udp
        .send_to(&a.media(MediaKind::Video, body), a.target())
        .await?;
    let d = b.recv_datagram().await?;
    let (h, rest) = MediaHeader::parse(&d)?;
    assert_eq!(h.kind, MediaKind::Video);
    assert_eq!(rest, body, "same payload, QUIC media header");

    let body = b"sealed bytes from QUIC";
    let mut q = MediaHeader::new(MediaKind::Audio).to_bytes().to_vec();
    q.extend_from_slice(body);
    b.conn.send_datagram(Bytes::from(q))?;
    let (got, _) = recv(&a.udp).await?;
    let (h, rest) = FastPathHeader::parse(&got)?;
    assert_eq!(h.ty, PacketType::Media(MediaKind::Audio));
    assert_eq!(
        h.channel.0,
        a.offer.channel.0 ^ 1,
        "names the sender's channel"
    );
    assert_eq!(rest, body);
    assert_eq!(got.len(), FASTPATH_HEADER_LEN + body.len());

    let m = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(
            &m,
            "duet_fastpath_bridged_packets_total{direction=\"to_fastpath\"}"
        ),
        1.0
    );
    assert_eq!(
        wait_metric(
            relay.ops_addr(),
            "duet_fastpath_bridged_packets_total{direction=\"to_quic\"}",
            1.0
        )
        .await,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn ended_sessions_release_their_channels() -> Result<()> {
    let relay = TestRelay::start().await;
    let (mut a, mut b) = pair(&relay, "fp-release").await?;
    let (pa, chan) = (a.media(MediaKind::Audio, b"late"), a.target());
    a.ctl.send_msg(&ClientMessage::Leave).await?;
    b.ctl.send_msg(&ClientMessage::Leave).await?;
    let until = tokio::time::Instant::now() + STEP;
    while relay.session_count() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(relay.session_count(), 0);
    a.udp.send_to(&pa, chan).await?;
    assert_eq!(
        wait_metric(
            relay.ops_addr(),
            "duet_fastpath_dropped_total{reason=\"unknown_channel\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_silent(&b.udp).await;
    Ok(())
}

#[tokio::test]
async fn without_the_fast_path_there_is_no_offer_and_tickets_are_refused() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.fast_path.enabled = false).await;
    assert_eq!(relay.fast_path_addr(), None);
    let (mut a, joined) = Raw::join(&relay, "fp-off", "alice", "d1").await?;
    assert!(joined.fast_path.is_none());
    a.send_msg(&ClientMessage::FastPathTicket).await?;
    match a.next().await? {
        Some(RelayMessage::Dropped(RefusalReason::FastPathUnavailable)) => Ok(()),
        other => bail!("expected Dropped(FastPathUnavailable), got {other:?}"),
    }
}

#[tokio::test]
async fn advertised_address_is_what_the_offer_names() -> Result<()> {
    let adv: SocketAddr = "192.0.2.7:4999".parse()?;
    let relay = TestRelay::start_with(|c| c.fast_path.advertise = Some(adv)).await;
    let (a, joined) = Raw::join(&relay, "fp-adv", "alice", "d1").await?;
    let offer = offer_of(&joined)?;
    assert_eq!(offer.target(a.conn.remote_address()), adv);
    Ok(())
}
