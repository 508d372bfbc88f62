//! Connecting to a relay and joining a session: the QUIC + TLS handshake (configured by
//! [`crate::tls`], so the hop negotiates X25519MLKEM768 first), then `Join` on the control
//! stream.
//!
//! Owns the connection, the join exchange and [`SharedEndpoint`] (one socket and one TLS
//! configuration for many clients); trust and TLS settings are [`crate::tls`]'s. What
//! happens after `Joined` belongs to `Call`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use duet_proto::control::encode;
use duet_proto::{ClientMessage, FrameDecoder, RelayMessage, ResumeSecret, SessionId};

use crate::call::{Call, Dial, Joining};
use crate::e2ee::{E2eeUnavailable, UnavailableReason};
use crate::engine::Engine;
use crate::error::{ResumeError, SdkError};
use crate::options::ConnectOptions;
use crate::secure::{self, E2eeConfig};

/// What a device keeps to take its place in a session back on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeTicket {
    pub session: SessionId,
    pub secret: ResumeSecret,
    /// The call was end-to-end encrypted: only [`Call::resume`] (which keeps the engine and
    /// its keys) may resume it; [`Client::resume`] refuses, typed.
    pub e2ee: bool,
}

/// A connection to a relay that has not joined a session yet.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    token: String,
    opts: ConnectOptions,
}

impl Client {
    /// Connects to the relay at `relay` (QUIC, TLS 1.3, ALPN `duet/1`). Not joined yet.
    ///
    /// By default the client binds its own UDP socket and QUIC endpoint and builds its TLS
    /// configuration from `opts.trusted_cert_pem`; with [`ConnectOptions::endpoint`] set it
    /// connects through that [`SharedEndpoint`] instead (no socket, driver or PEM parsing
    /// of its own).
    pub async fn connect(
        relay: SocketAddr,
        token: impl Into<String>,
        opts: ConnectOptions,
    ) -> Result<Client, SdkError> {
        let bind: SocketAddr = if relay.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let (endpoint, connecting) = match &opts.endpoint {
            Some(shared) => (shared.endpoint.clone(), shared.connect(relay, &opts)?),
            None => {
                let mut endpoint = quinn::Endpoint::client(bind)?;
                endpoint.set_default_client_config(crate::tls::quic_client_config(&opts)?);
                let connecting = endpoint.connect(relay, &opts.server_name)?;
                (endpoint, connecting)
            }
        };
        let conn = tokio::time::timeout(opts.join_timeout, connecting)
            .await
            .map_err(|_| SdkError::Timeout("the QUIC handshake"))??;
        Ok(Client {
            endpoint,
            conn,
            token: token.into(),
            opts,
        })
    }

    /// The raw QUIC connection, for diagnostics and tests.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Joins `session` on the plain transport: media frames are carried as given, with no
    /// end-to-end encryption (the hop to the relay is still TLS 1.3). For apps that
    /// encrypt themselves, tests and load generation; calls use [`Client::join_e2ee`].
    pub async fn join(self, session: SessionId) -> Result<Call, SdkError> {
        self.join_inner(session, None, false).await
    }

    /// The claims of this client's token, as the SDK reads them (unverified; the relay
    /// verifies).
    pub fn token_claims(&self) -> Result<duet_proto::JoinClaims, SdkError> {
        secure::token_claims(&self.token)
    }

    /// Joins `session` and agrees end-to-end keys with the peer: returns once the peer has
    /// joined and the handshake succeeded, so every frame of the call is sealed. The E2EE
    /// policy claim is read from the token (the app cannot misstate it).
    ///
    /// Errors, all with no media sent or delivered:
    /// * [`SdkError::E2eeUnavailable`]: this user's token or options do not allow E2EE
    ///   (`PolicyDisabled`, `ComplianceRecording`, `UserNotEnabled`), or the peer's signed
    ///   token does not (`PeerNotEnabled`, with its reason). A plain call instead is the
    ///   app's explicit, user-visible choice, never automatic.
    /// * [`SdkError::Handshake`]: the key agreement failed or was attacked (tampering, a
    ///   bad signature or token, a spliced session, an unproven decline, a changed pinned
    ///   identity under `IdentityPolicy::Block`).
    /// * [`SdkError::WrongSession`]: the relay answered for another session.
    /// * [`SdkError::Timeout`]: no peer or no agreement within `handshake_timeout`.
    /// * [`SdkError::PeerLeft`]: the peer left during the handshake.
    ///
    /// Events seen during the handshake (`PeerJoined`) are consumed; the call's first event
    /// is [`crate::Event::E2eeEstablished`].
    pub async fn join_e2ee(self, session: SessionId, cfg: E2eeConfig) -> Result<Call, SdkError> {
        let claim = self.token_claims()?.e2ee;
        let call = match self.join_inner(session, None, true).await {
            // The relay refuses joins whose claim forbids E2EE (and tells a waiting peer).
            Err(SdkError::Refused(r)) if Some(r) == claim.refusal() => {
                let reason = UnavailableReason::from_claim(claim).ok_or(SdkError::Refused(r))?;
                return Err(E2eeUnavailable::local(reason).into());
            }
            other => other?,
        };
        call.set_padding(cfg.options.padding);
        match secure::handshake(&call, cfg).await {
            Ok(est) => {
                call.install_e2ee(est).await?;
                Ok(call)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no end-to-end encrypted call");
                let _ = call.leave().await;
                Err(e)
            }
        }
    }

    /// Takes this device's place back in the ticket's session on this new connection, for a
    /// *plain* call (see [`Client::join`]). A ticket of an end-to-end encrypted call fails
    /// with [`ResumeError::NeedsKeys`]: a ticket cannot carry the keys, and a keyless
    /// continuation of an E2EE call would send media in the clear. Resume such a call with
    /// [`Call::resume`], which keeps its engine.
    pub async fn resume(self, ticket: &ResumeTicket) -> Result<Call, SdkError> {
        if ticket.e2ee {
            return Err(ResumeError::NeedsKeys.into());
        }
        self.join_inner(ticket.session.clone(), Some(ticket.secret.clone()), false)
            .await
    }

    async fn join_inner(
        self,
        session: SessionId,
        resume: Option<ResumeSecret>,
        e2ee: bool,
    ) -> Result<Call, SdkError> {
        let dial = Dial {
            relay: self.conn.remote_address(),
            token: self.token.clone(),
            opts: self.opts.clone(),
        };
        let engine = Engine::new(session.clone(), self.opts.reassembly_timeout, e2ee);
        let j = self.join_link(session, resume, e2ee).await?;
        Ok(Call::start(j, dial, engine))
    }

    /// Sends `Join` and waits for `Joined`: a link ready to attach to a call's engine. The
    /// relay's answer must name the session asked for.
    pub(crate) async fn join_link(
        self,
        session: SessionId,
        resume: Option<ResumeSecret>,
        e2ee: bool,
    ) -> Result<Joining, SdkError> {
        let started = Instant::now();
        let Client {
            endpoint,
            conn,
            token,
            opts,
        } = self;
        let asked = session.clone();
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&encode(&ClientMessage::Join {
                session,
                token,
                resume,
                e2ee,
            })?)
            .await?;
            let mut decoder = FrameDecoder::default();
            loop {
                if let Some(msg) = decoder.next_message::<RelayMessage>()? {
                    return match msg {
                        RelayMessage::Joined(joined) => Ok((send, recv, decoder, joined)),
                        RelayMessage::Refused(reason) => Err(SdkError::Refused(reason)),
                        other => Err(SdkError::Protocol(format!(
                            "expected Joined or Refused, got {other:?}"
                        ))),
                    };
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
                    Ok(None) => return Err(SdkError::Closed),
                    Err(quinn::ReadError::ConnectionLost(e)) => return Err(e.into()),
                    Err(e) => return Err(SdkError::Protocol(e.to_string())),
                }
            }
        };
        let (send, recv, decoder, joined) = tokio::time::timeout(opts.join_timeout, exchange)
            .await
            .map_err(|_| SdkError::Timeout("Joined"))??;
        if joined.session != asked {
            // The relay's word against the app's: a relay that pairs this endpoint into
            // another session is lying.
            conn.close(1u32.into(), b"joined another session");
            return Err(SdkError::WrongSession {
                asked,
                joined: joined.session,
            });
        }
        tracing::debug!(
            session = %joined.session,
            slot = ?joined.slot,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "joined"
        );
        Ok(Joining {
            endpoint,
            conn,
            streams: (send, recv, decoder),
            joined,
        })
    }
}

/// One QUIC endpoint (one UDP socket and its driver task) and one TLS client configuration,
/// shared by many clients: an app holding several calls at once, or a load generator that
/// simulates many devices. Put it in [`ConnectOptions::endpoint`]: every
/// [`Client::connect`] with those options, and every resume or move of the calls they
/// start, then connects through it instead of binding a socket, spawning an endpoint
/// driver and parsing the trusted PEM for each connection. Cloning it is cheap (the clones
/// are the same endpoint); the socket closes when the last clone and the last connection
/// on it are gone.
///
/// Connections on one endpoint are told apart by their QUIC connection ids, so calls that
/// share it never see each other's media or control. They share one local port, so
/// [`Call::rebind_quic`] (which would move the socket of every call on it) is refused with
/// [`SdkError::EndpointShared`].
///
/// TLS session resumption is **off** unless asked for: every connection makes a full TLS
/// 1.3 handshake (certificate check, hybrid key exchange), as a device's first connection
/// does, so sharing an endpoint makes nothing look cheaper than it is.
/// [`SharedEndpointBuilder::tls_resumption`] turns it on (later connections then resume
/// sessions from tickets the server gave earlier ones on this endpoint; a Duet relay issues
/// no tickets, so against one it changes nothing).
///
/// Trust is the endpoint's: `ConnectOptions::trusted_cert_pem` may be `None` with it; when
/// given, it must be the PEM the endpoint was built with ([`SdkError::Certificate`]
/// otherwise, so no connection silently trusts something else). The transport settings
/// (keep-alive, idle timeout) still come from each connection's own options.
#[derive(Clone)]
pub struct SharedEndpoint {
    endpoint: quinn::Endpoint,
    crypto: Arc<quinn::crypto::rustls::QuicClientConfig>,
    trusted: Arc<[u8]>,
    tls_resumption: bool,
}

impl std::fmt::Debug for SharedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEndpoint")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("tls_resumption", &self.tls_resumption)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`SharedEndpoint`]: see [`SharedEndpoint::builder`].
#[derive(Debug, Clone)]
pub struct SharedEndpointBuilder {
    trusted_cert_pem: Vec<u8>,
    local: SocketAddr,
    tls_resumption: bool,
}

impl SharedEndpoint {
    /// An endpoint trusting `trusted_cert_pem` (the relay's certificate or its CA's), bound
    /// to `0.0.0.0:0` unless [`SharedEndpointBuilder::local_addr`] says otherwise, TLS
    /// session resumption off.
    pub fn builder(trusted_cert_pem: impl Into<Vec<u8>>) -> SharedEndpointBuilder {
        SharedEndpointBuilder {
            trusted_cert_pem: trusted_cert_pem.into(),
            local: (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            tls_resumption: false,
        }
    }

    /// The local address of the shared socket.
    pub fn local_addr(&self) -> Result<SocketAddr, SdkError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Whether connections on this endpoint may resume earlier TLS sessions.
    pub fn tls_resumption(&self) -> bool {
        self.tls_resumption
    }

    /// QUIC connections open on this endpoint now (all clients, all calls).
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// Starts a connection to `relay` with `opts`' transport settings and this endpoint's
    /// trust.
    fn connect(
        &self,
        relay: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<quinn::Connecting, SdkError> {
        if let Some(pem) = &opts.trusted_cert_pem {
            if pem.as_slice() != &*self.trusted {
                return Err(SdkError::Certificate(
                    "the options trust another certificate than their shared endpoint".into(),
                ));
            }
        }
        let cfg = crate::tls::quic_client_config_with(self.crypto.clone(), opts);
        Ok(self.endpoint.connect_with(cfg, relay, &opts.server_name)?)
    }
}

impl SharedEndpointBuilder {
    /// Where to bind the shared socket (e.g. `[::]:0` to reach IPv6 relays).
    pub fn local_addr(mut self, local: SocketAddr) -> Self {
        self.local = local;
        self
    }

    /// Lets connections resume TLS sessions of earlier connections on this endpoint
    /// (cheaper handshakes; off by default, see [`SharedEndpoint`]).
    pub fn tls_resumption(mut self, on: bool) -> Self {
        self.tls_resumption = on;
        self
    }

    /// Parses the PEM, builds the TLS configuration and binds the socket. Must run inside
    /// a tokio runtime (the endpoint's driver is spawned on it).
    ///
    /// Errors: [`SdkError::Certificate`] for an unusable PEM, [`SdkError::Tls`] for a TLS
    /// setup failure, [`SdkError::Io`] when the socket cannot be bound.
    pub fn build(self) -> Result<SharedEndpoint, SdkError> {
        let mut tls = crate::tls::tls_client_config(&ConnectOptions::trusting(
            self.trusted_cert_pem.clone(),
        ))?;
        if !self.tls_resumption {
            // One config serves every connection, so its session cache would make all but
            // the first handshake a resumption: not what a device's first join costs.
            tls.resumption = rustls::client::Resumption::disabled();
        }
        let crypto = crate::tls::quic_crypto(tls)?;
        let endpoint = quinn::Endpoint::client(self.local)?;
        Ok(SharedEndpoint {
            endpoint,
            crypto,
            trusted: self.trusted_cert_pem.into(),
            tls_resumption: self.tls_resumption,
        })
    }
}
