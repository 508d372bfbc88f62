//! The SDK as an app uses it, against a relay under test: connect and join (plain or
//! end-to-end encrypted), wait for events, check media still flows, and order two joins so
//! each test knows which endpoint holds which slot.
//!
//! What the SDK does is the SDK's (`duet_sdk`); hand-built clients are [`crate::raw`]'s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use duet_proto::{E2eeClaim, MediaKind, TokenKeyring};
use duet_relay::RelayHandle;
use duet_sdk::{
    Call, CallOptions, Client, ConnectOptions, E2eeConfig, Event, IdentityKey, SdkError,
};

use crate::relay::RelayUnderTest;
use crate::tokens::{claims, sid};
use crate::STEP;

/// The SDK's defaults, trusting `relay`'s certificate.
pub fn connect_options(relay: &impl RelayUnderTest) -> ConnectOptions {
    ConnectOptions::trusting(relay.cert_pem())
}

/// Connects with the SDK and joins `session` on the plain transport (no E2EE).
pub async fn sdk_join(
    relay: &impl RelayUnderTest,
    session: &str,
    user: &str,
    device: &str,
) -> Result<Call> {
    let token = relay.token(session, user, device);
    let client = Client::connect(relay.quic_addr(), token, connect_options(relay)).await?;
    Ok(client.join(sid(session)).await?)
}

/// E2EE on (`on`) or off for this user, a fresh identity key, the handshake bounded by
/// [`STEP`]. No issuer keys: [`e2ee_join`] adds the relay's (see [`issuer_keys`]).
pub fn e2ee_config(on: bool) -> E2eeConfig {
    E2eeConfig {
        options: CallOptions {
            e2ee: on,
            ..CallOptions::default()
        },
        handshake_timeout: STEP,
        ..E2eeConfig::new(
            Arc::new(IdentityKey::generate().expect("an identity key")),
            TokenKeyring::default(),
        )
    }
}

/// The public key the relay's tokens are signed with, as an SDK holds it.
pub fn issuer_keys(relay: &impl RelayUnderTest) -> TokenKeyring {
    TokenKeyring::new(vec![relay.signer().verifying_key()])
}

/// Connects as `user` (device `<user>-phone`) with a token carrying `claim`, and joins
/// `session` with end-to-end encryption as `cfg` says. The SDK's error is kept typed.
pub async fn e2ee_join(
    relay: &impl RelayUnderTest,
    session: &str,
    user: &str,
    claim: E2eeClaim,
    cfg: E2eeConfig,
    opts: ConnectOptions,
) -> Result<Call, SdkError> {
    let mut c = claims(session, user, &format!("{user}-phone"));
    c.e2ee = claim;
    let mut cfg = cfg;
    if cfg.token_keys.is_empty() {
        cfg.token_keys = issuer_keys(relay);
    }
    let client = Client::connect(relay.quic_addr(), relay.token_with(&c), opts).await?;
    client.join_e2ee(sid(session), cfg).await
}

/// Runs two joins so that `first` takes slot A: `second` is started only once the relay
/// counts one more endpoint (or after [`STEP`]). Both then run together, as an E2EE
/// handshake needs.
pub async fn a_then_b<A: Future, B: Future>(
    relay: &RelayHandle,
    first: A,
    second: B,
) -> (A::Output, B::Output) {
    let before = relay.endpoint_count();
    let second = async {
        let deadline = tokio::time::Instant::now() + STEP;
        while relay.endpoint_count() == before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        second.await
    };
    tokio::join!(first, second)
}

/// The next event, skipping none; fails after [`STEP`].
pub async fn next_event(call: &Call) -> Result<Event> {
    tokio::time::timeout(STEP, call.next_event())
        .await
        .context("timed out waiting for an event")?
        .context("event stream ended")
}

/// The first event for which `f` holds (`what` names it), skipping others; fails after
/// `within`.
pub async fn wait_for_event(
    call: &Call,
    what: &str,
    within: Duration,
    f: impl Fn(&Event) -> bool,
) -> Result<Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, call.next_event())
            .await
            .with_context(|| format!("timed out waiting for {what}"))?
            .with_context(|| format!("events ended before {what}"))?;
        if f(&ev) {
            return Ok(ev);
        }
    }
}

/// Waits for an event equal to `want`, skipping others; fails after [`STEP`].
pub async fn expect_event(call: &Call, want: Event) -> Result<()> {
    wait_for_event(call, &format!("{want:?}"), STEP, |e| *e == want).await?;
    Ok(())
}

/// What a failed send means to [`deliver_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The link should be up: the first failed send is the error.
    Fails,
    /// The link is moving (a failover): keep sending until the frame arrives.
    Retried,
}

/// Sends `frame` (as audio) from `from` until `to` delivers it intact, again every 200 ms
/// (datagrams are unreliable); fails after [`STEP`].
pub async fn deliver_frame(
    from: &Call,
    to: &Call,
    frame: &[u8],
    on_send_error: SendFailure,
) -> Result<()> {
    tokio::time::timeout(STEP, async {
        loop {
            if let Err(e) = from.send_media(MediaKind::Audio, frame).await {
                if on_send_error == SendFailure::Fails {
                    return Err(e.into());
                }
            }
            if let Ok(Ok(got)) =
                tokio::time::timeout(Duration::from_millis(200), to.recv_media()).await
            {
                if got.data.as_ref() == frame {
                    return anyhow::Ok(());
                }
            }
        }
    })
    .await
    .context("the frame did not arrive")?
}

/// A pair that still forwards: one small frame each way arrives intact (resent until it
/// does: datagrams are unreliable).
pub async fn assert_media_flows(a: &Call, b: &Call) -> Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        let payload = format!("still here {}", rand::random::<u64>()).into_bytes();
        deliver_frame(from, to, &payload, SendFailure::Fails)
            .await
            .context("media did not flow")?;
    }
    Ok(())
}

/// One direction of a call carrying media while a test does something else (a reload, a
/// flood): frames sent and received, and every event on the receiving side that means the
/// call broke. Started by [`carry_media`].
#[derive(Debug, Default)]
pub struct MediaFlow {
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
    broken: std::sync::Mutex<Vec<String>>,
}

impl MediaFlow {
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// What broke the call, if anything did: a peer-left, reconnecting, session-ended or
    /// disconnected event, or the media stream ending.
    pub fn broken(&self) -> Vec<String> {
        self.broken.lock().map(|b| b.clone()).unwrap_or_default()
    }
    fn broke(&self, why: String) {
        if let Ok(mut b) = self.broken.lock() {
            b.push(why);
        }
    }
}

/// Sends a 160-byte audio frame from `from` every 20 ms and counts what `to` receives, until
/// `stop` turns true (and 300 ms more of receiving, for frames in flight).
pub fn carry_media(
    from: Arc<Call>,
    to: Arc<Call>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Arc<MediaFlow> {
    use std::sync::atomic::Ordering::Relaxed;
    let flow = Arc::new(MediaFlow::default());
    let (f, mut s) = (flow.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*s.borrow_and_update() {
            tick.tick().await;
            if from.send_media(MediaKind::Audio, &[7u8; 160]).await.is_ok() {
                f.sent.fetch_add(1, Relaxed);
            }
        }
    });
    let (f, mut s) = (flow.clone(), stop);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = to.recv_media() => match r {
                    Ok(_) => { f.received.fetch_add(1, Relaxed); }
                    Err(e) => { f.broke(format!("recv: {e}")); break; }
                },
                ev = to.next_event() => match ev {
                    Some(Event::PeerLeft(_) | Event::PeerReconnecting | Event::SessionEnded(_)
                        | Event::Disconnected(_)) | None => f.broke(format!("{ev:?}")),
                    Some(_) => {}
                },
                _ = s.changed() => break,
            }
        }
        // Frames still in flight when the sender stopped are not lost: keep counting a little.
        let grace = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                r = to.recv_media() => match r {
                    Ok(_) => { f.received.fetch_add(1, Relaxed); }
                    Err(_) => break,
                },
                _ = &mut grace => break,
            }
        }
    });
    flow
}
