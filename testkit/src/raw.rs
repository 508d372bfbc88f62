//! [`Raw`]: a hand-driven client for tests that must send what the SDK never would (broken
//! frames, floods, media before `Join`) or watch exactly what the relay sends back: raw
//! control frames on the one bidirectional stream and raw QUIC datagrams.
//!
//! Its QUIC and TLS configuration is the SDK's own (`duet_sdk::tls`, X25519MLKEM768 first),
//! so to the relay it is an ordinary client. The SDK's client is [`crate::sdk`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use duet_proto::control::encode;
use duet_proto::{
    ClientMessage, FrameDecoder, Joined, MediaHeader, MediaKind, RelayMessage, ResumeSecret,
};
use duet_sdk::ConnectOptions;

use crate::relay::RelayUnderTest;
use crate::tokens::sid;
use crate::STEP;

/// A QUIC client endpoint on loopback trusting `cert_pem`, configured as the SDK configures
/// its own.
pub fn client_endpoint(cert_pem: &[u8]) -> Result<quinn::Endpoint> {
    let cfg = duet_sdk::tls::quic_client_config(&ConnectOptions::trusting(cert_pem))?;
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// A connection with its control stream open, driven by hand.
pub struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl Raw {
    /// Connects to `relay` and opens the control stream; nothing is sent yet.
    pub async fn connect(relay: &impl RelayUnderTest) -> Result<Raw> {
        Self::connect_to(relay.quic_addr(), &relay.cert_pem()).await
    }

    /// Connects to the relay at `addr` whose certificate is `cert_pem`.
    pub async fn connect_to(addr: SocketAddr, cert_pem: &[u8]) -> Result<Raw> {
        let endpoint = client_endpoint(cert_pem)?;
        let conn = tokio::time::timeout(STEP, endpoint.connect(addr, "localhost")?)
            .await
            .context("timed out in the QUIC handshake")??;
        let (send, recv) = conn.open_bi().await?;
        Ok(Raw {
            endpoint,
            conn,
            send,
            recv,
            dec: FrameDecoder::default(),
        })
    }

    /// Connects and joins `session` as `user`'s `device` (E2EE claimed), expecting `Joined`.
    pub async fn join(
        relay: &impl RelayUnderTest,
        session: &str,
        user: &str,
        device: &str,
    ) -> Result<(Raw, Joined)> {
        let mut r = Raw::connect(relay).await?;
        match r
            .join_raw(session, relay.token(session, user, device), None)
            .await?
        {
            RelayMessage::Joined(j) => Ok((r, j)),
            other => bail!("expected Joined, got {other:?}"),
        }
    }

    /// Bytes on the control stream as they are, framed or not.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// One control message, framed.
    pub async fn send_msg(&mut self, m: &ClientMessage) -> Result<()> {
        let f = encode(m)?;
        self.write(&f).await
    }

    /// The next relay message, `None` if the stream or connection ended; fails after [`STEP`].
    pub async fn next(&mut self) -> Result<Option<RelayMessage>> {
        let fut = async {
            loop {
                if let Some(m) = self.dec.next_message::<RelayMessage>()? {
                    return Ok(Some(m));
                }
                match self.recv.read_chunk(65536, true).await {
                    Ok(Some(c)) => self.dec.extend(&c.bytes),
                    _ => return Ok(None),
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .context("timed out waiting for a relay message")?
    }

    /// Sends `Join` (E2EE claimed) with `token` and returns the relay's answer.
    pub async fn join_raw(
        &mut self,
        session: &str,
        token: String,
        resume: Option<ResumeSecret>,
    ) -> Result<RelayMessage> {
        self.send_msg(&ClientMessage::Join {
            session: sid(session),
            token,
            resume,
            e2ee: true,
        })
        .await?;
        self.next().await?.context("no answer to Join")
    }

    /// The next datagram the relay forwards; fails after [`STEP`].
    pub async fn recv_datagram(&self) -> Result<Bytes> {
        Ok(tokio::time::timeout(STEP, self.conn.read_datagram()).await??)
    }

    /// Waits for the connection to close; returns its application close code.
    pub async fn closed_code(&self) -> Option<u64> {
        match tokio::time::timeout(STEP, self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

/// Two joined raw endpoints still forward: one small audio datagram each way arrives intact
/// (resent until it does: datagrams are unreliable).
pub async fn assert_datagrams_flow(a: &Raw, b: &Raw) -> Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        let mut d = MediaHeader::new(MediaKind::Audio).to_bytes().to_vec();
        d.extend_from_slice(format!("still here {}", rand::random::<u64>()).as_bytes());
        let d = Bytes::from(d);
        tokio::time::timeout(STEP, async {
            loop {
                from.conn.send_datagram_wait(d.clone()).await?;
                let got = tokio::time::timeout(Duration::from_millis(200), to.conn.read_datagram());
                if let Ok(Ok(got)) = got.await {
                    if got == d {
                        return anyhow::Ok(());
                    }
                }
            }
        })
        .await
        .context("datagrams did not flow")??;
    }
    Ok(())
}
