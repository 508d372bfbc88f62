//! Driving the E2EE handshake over a joined call: the seam between the transport
//! (`Call`'s signals and events) and the sans-IO core in [`crate::e2ee`].
//!
//! Owns: reading the token's E2EE claim, waiting for the peer, sending and receiving the
//! handshake messages, mapping every outcome to a typed [`SdkError`]. Media keys are
//! installed into the `Call` by `Client::join_e2ee` only when this returns `Established`.

use std::sync::Arc;
use std::time::Duration;

use duet_proto::{JoinClaims, TokenKeyring};

use crate::call::{Call, Event};
use crate::e2ee::{
    CallOptions, Established, Handshake, HandshakeConfig, IdentityKey, Role, Start, Step,
};
use crate::error::SdkError;

/// What `Client::join_e2ee` needs besides the session.
#[derive(Debug, Clone)]
pub struct E2eeConfig {
    /// This user's long-term identity key (the app keeps it across calls: PKCS#8 from
    /// [`IdentityKey::to_pkcs8`]).
    pub identity: Arc<IdentityKey>,
    /// The user's choices for this call (E2EE on, pinned peer, suite, rekey schedule).
    pub options: CallOptions,
    /// How long `join_e2ee` waits for the peer to join and the keys to be agreed.
    pub handshake_timeout: Duration,
    /// The token issuer's public keys (the app's backend publishes them, like the relay's
    /// `token-key.pub`): the peer's signed token is verified with them. Required: with
    /// none, `join_e2ee` fails with `HandshakeError::NoTokenKeys`.
    pub token_keys: TokenKeyring,
}

impl E2eeConfig {
    /// E2EE on with default options and a 30 s handshake timeout; peer tokens verified
    /// with `token_keys`.
    pub fn new(identity: Arc<IdentityKey>, token_keys: TokenKeyring) -> Self {
        Self {
            identity,
            options: CallOptions::default(),
            handshake_timeout: Duration::from_secs(30),
            token_keys,
        }
    }
}

/// The claims of a join token, read without verifying its signature (the relay verifies
/// it; the SDK only needs to know what the token says, so the app cannot misstate its claim).
pub fn token_claims(token: &str) -> Result<JoinClaims, SdkError> {
    duet_proto::JoinToken::peek(token)
        .map(|t| t.claims)
        .map_err(|e| SdkError::Token(e.to_string()))
}

/// Runs the handshake on a freshly joined call. `Ok` only with agreed keys.
pub(crate) async fn handshake(call: &Call, cfg: E2eeConfig) -> Result<Established, SdkError> {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hcfg = HandshakeConfig {
        role: Role::from_slot(call.slot()),
        identity: cfg.identity,
        // The session the app asked for, not the relay's word.
        context: call.session().as_str().as_bytes().to_vec(),
        token: call.token(),
        token_keys: cfg.token_keys,
        now_unix,
        options: cfg.options,
    };
    let mut peer_present = call.peer_present_at_join();
    match Handshake::start(hcfg)? {
        Start::Declined { send, unavailable } => {
            // Tell the peer (once it is there) so its SDK fails cleanly, then give up.
            let wait = async {
                while !peer_present {
                    match call.next_event().await {
                        Some(Event::PeerJoined) => peer_present = true,
                        Some(Event::PeerE2eeUnavailable(_)) | None => return false,
                        Some(_) => {}
                    }
                }
                true
            };
            if tokio::time::timeout(cfg.handshake_timeout, wait)
                .await
                .unwrap_or(false)
            {
                call.send_signal(&send).await?;
            }
            Err(SdkError::E2eeUnavailable(unavailable))
        }
        Start::Proceed {
            mut handshake,
            send,
        } => {
            let mut commit = send;
            let run = async {
                if peer_present {
                    if let Some(m) = commit.take() {
                        call.send_signal(&m).await?;
                    }
                }
                loop {
                    tokio::select! {
                        biased;
                        sig = call.recv_signal() => {
                            let sig = sig?;
                            if let Some(est) = on_signal(call, &mut handshake, &sig).await? {
                                return Ok(est);
                            }
                        }
                        ev = call.next_event() => match ev.ok_or(SdkError::Closed)? {
                            Event::PeerJoined => {
                                if let Some(m) = commit.take() {
                                    call.send_signal(&m).await?;
                                }
                            }
                            Event::PeerE2eeUnavailable(_) => {
                                // The relay's claim counts only with the peer's signed token.
                                let token = call.take_peer_unavailable_token().unwrap_or_default();
                                return Err(match handshake.on_peer_unavailable(&token) {
                                    Ok(u) => u.into(),
                                    Err(e) => e.into(),
                                });
                            }
                            Event::PeerLeft(r) => {
                                // Its last signals (a Decline) may be queued behind.
                                while let Some(sig) = call.try_recv_signal().await {
                                    if let Some(est) =
                                        on_signal(call, &mut handshake, &sig).await?
                                    {
                                        return Ok(est);
                                    }
                                }
                                return Err(SdkError::PeerLeft(r));
                            }
                            Event::SessionEnded(_) | Event::Disconnected(_) => {
                                return Err(SdkError::Closed);
                            }
                            _ => {}
                        },
                    }
                }
            };
            tokio::time::timeout(cfg.handshake_timeout, run)
                .await
                .map_err(|_| SdkError::Timeout("the end-to-end key agreement"))?
        }
    }
}

async fn on_signal(
    call: &Call,
    handshake: &mut Handshake,
    sig: &[u8],
) -> Result<Option<Established>, SdkError> {
    match handshake.on_signal(sig)? {
        Step::Send(m) => {
            call.send_signal(&m).await?;
            Ok(None)
        }
        Step::Established { send, established } => {
            if let Some(m) = send {
                call.send_signal(&m).await?;
            }
            Ok(Some(*established))
        }
        Step::Unavailable(u) => Err(u.into()),
    }
}
