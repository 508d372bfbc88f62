//! The call engine, sans-IO: everything a call knows that does not depend on which
//! connection carries it.
//!
//! Owns the E2EE state (sealer, opener, epochs, replay windows, the code and the peer's
//! identity), fragmenting and reassembly, frames held before the keys or while a key
//! confirmation is pending, the key confirmation itself ([`confirm`]), in-call hybrid
//! rekeys (`hybrid`), padding ([`padding`]) and the event queue ([`events`]). Does not
//! own sockets, tasks or clocks: the driver (`Call`) passes bytes and `now` in
//! (`handle_*`) and takes bytes, frames, events and deadlines out (`poll_*`).
//!
//! Because the engine outlives any one connection, a resume on the same node or a move to
//! another node attaches a new connection to the *same* engine: same keys, epochs,
//! counters, frame ids and security code, no new handshake. After such a change
//! ([`Engine::begin_confirmation`], also on the relay's `PeerResumed`/`PeerJoined` once
//! keyed) the engine holds every received frame until the peer proved, end to end, that
//! it holds the keys; [`Event::KeysConfirmed`] then releases them.
//!
//! An engine made for an E2EE session ([`Engine::new`] with `e2ee`) never carries a frame
//! unsealed: before the keys `seal_and_split` fails with `E2eeNotEstablished`, and received
//! frames wait for the opener. There is no transition from E2EE to plain.
//!
//! Size: ~800 lines: the one state machine of a call (str0m's `Rtc` shape); its events,
//! key confirmation, hybrid rekey and padding are in their own modules.

pub mod confirm;
pub mod events;
mod hybrid;
pub mod padding;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duet_proto::{MediaKind, SessionId, UserId};

use crate::e2ee::{
    Established, FrameOpener, FrameSealer, IdentityCheck, PeerIdentity, RecvStats, SecurityCode,
};
use crate::error::SdkError;
use crate::fragment::{Fragmenter, FrameSeq, MediaFrame, Reassembler, ReassemblyStats};

use confirm::{Confirm, ConfirmKind, NONCE_LEN};
pub use events::{Event, EventQueue};
pub use padding::Padding;

/// Frames kept while waiting for the keys or for a key confirmation; beyond that the
/// oldest are dropped and counted.
pub const MAX_FRAMES_BEFORE_KEYS: usize = 64;

/// First wait before a key-confirmation request is sent again (doubling up to
/// [`CONFIRM_RETRY_MAX`]): the relay drops signals while the peer is away.
pub const CONFIRM_RETRY: Duration = Duration::from_millis(200);
pub const CONFIRM_RETRY_MAX: Duration = Duration::from_secs(2);
/// After this long without the peer's proof, the app is told ([`Event::KeysUnconfirmed`]);
/// media stays held and the requests go on.
pub const CONFIRM_WARN: Duration = Duration::from_secs(10);

/// End-to-end encryption counters of one call. Rejected frames are never delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct E2eeStats {
    pub frames_sealed: u64,
    pub frames_opened: u64,
    /// This side's epochs started after the first (on demand or on schedule).
    pub rekeys_sent: u64,
    /// The peer's new epochs seen.
    pub rekeys_received: u64,
    /// Failed authentication: flipped bits, forged frames, wrong key.
    pub rejected_tampered: u64,
    /// Already seen, or older than the replay window.
    pub rejected_replayed: u64,
    /// An epoch older than the current one, past its grace period.
    pub rejected_stale_epoch: u64,
    /// A KID that is not the peer's direction, or too far ahead.
    pub rejected_unknown_kid: u64,
    /// Not an SFrame frame at all.
    pub rejected_malformed: u64,
    /// Frames that arrived before the keys and were opened once they were in.
    pub buffered_before_keys: u64,
    /// Frames that arrived before the keys (or during a key confirmation) and were
    /// dropped (buffer full).
    pub dropped_before_keys: u64,
    /// Key confirmations completed (one per resume or move).
    pub confirmations: u64,
    /// Authentic frames dropped for being more than `RekeyPolicy::max_lag` behind.
    pub rejected_too_late: u64,
    /// Padding bytes this side sealed (the bandwidth padding cost).
    pub padding_bytes_sent: u64,
}

impl E2eeStats {
    /// Every frame dropped by the E2EE layer.
    pub fn rejected(&self) -> u64 {
        self.rejected_tampered
            + self.rejected_replayed
            + self.rejected_stale_epoch
            + self.rejected_unknown_kid
            + self.rejected_malformed
            + self.rejected_too_late
            + self.dropped_before_keys
    }
}

/// What the handshake proved, kept as state for the call's life.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub code: SecurityCode,
    pub peer: PeerIdentity,
    pub identity_check: IdentityCheck,
    pub peer_user: Option<UserId>,
}

struct Secure {
    sealer: FrameSealer,
    opener: FrameOpener,
    verdict: Verdict,
    /// What the next hybrid rekey mixes its fresh secrets into.
    chain: zeroize::Zeroizing<Vec<u8>>,
    hybrid: hybrid::Hybrid,
}

enum Keys {
    /// A plain call: frames are carried as given.
    Plain,
    /// An E2EE call before the handshake finished: nothing is sent, frames wait.
    Awaiting,
    Secure(Box<Secure>),
}

/// A key confirmation this side asked for and has not had answered.
struct Pending {
    nonce: [u8; NONCE_LEN],
    next_send: Instant,
    backoff: Duration,
    /// When `KeysUnconfirmed` is due; `None` once told.
    warn_at: Option<Instant>,
}

/// Whether a signal was the engine's or is the app's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalUse {
    /// Deliver to the app.
    App,
    /// The engine's own (a key confirmation); not for the app.
    Engine,
}

/// One call's state, whatever connection carries it.
pub struct Engine {
    session: SessionId,
    keys: Keys,
    fragmenter: Fragmenter,
    reassembler: Reassembler,
    /// Frames waiting for the opener (sealed) or for a confirmation (opened).
    held: VecDeque<MediaFrame>,
    delivered: VecDeque<MediaFrame>,
    events: EventQueue,
    /// Fast-path events held while the keys are awaited, so `E2eeEstablished` comes first.
    held_events: Vec<Event>,
    transmit: VecDeque<Bytes>,
    pending: Option<Pending>,
    buffered_before_keys: u64,
    dropped_before_keys: u64,
    confirmations: u64,
    last_recv: RecvStats,
    padding: Padding,
    /// Bytes of padding sealed (the bandwidth it cost).
    padding_bytes: u64,
    /// Authentic frames whose padding trailer was malformed (a broken peer).
    bad_padding: u64,
    /// The peer token the relay forwarded with `PeerE2eeUnavailable` (for the handshake to
    /// verify; the claim alone is the relay's word).
    peer_unavailable_token: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("session", &self.session)
            .field("e2ee", &self.is_e2ee())
            .field("confirming", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A new call on `session`; `e2ee` = frames must be sealed (a call from `join_e2ee`).
    pub fn new(session: SessionId, reassembly_timeout: Duration, e2ee: bool) -> Self {
        Self {
            session,
            keys: if e2ee { Keys::Awaiting } else { Keys::Plain },
            fragmenter: Fragmenter::default(),
            reassembler: Reassembler::new(reassembly_timeout),
            held: VecDeque::new(),
            delivered: VecDeque::new(),
            events: EventQueue::default(),
            held_events: Vec::new(),
            transmit: VecDeque::new(),
            pending: None,
            buffered_before_keys: 0,
            dropped_before_keys: 0,
            confirmations: 0,
            last_recv: RecvStats::default(),
            padding: Padding::Off,
            padding_bytes: 0,
            bad_padding: 0,
            peer_unavailable_token: None,
        }
    }

    /// How this side pads its sealed frames from now on.
    pub fn set_padding(&mut self, padding: Padding) {
        self.padding = padding;
    }

    /// The session the app asked for (not the relay's word).
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// Whether this call's frames must be sealed (keys agreed or not).
    pub fn is_e2ee_session(&self) -> bool {
        !matches!(self.keys, Keys::Plain)
    }

    /// Whether the keys are in.
    pub fn is_e2ee(&self) -> bool {
        matches!(self.keys, Keys::Secure(_))
    }

    /// Whether received media waits for a key confirmation.
    pub fn is_confirming(&self) -> bool {
        self.pending.is_some()
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.keys {
            Keys::Secure(s) => Some(&s.verdict),
            _ => None,
        }
    }

    /// Installs the agreed keys. Emits `E2eeEstablished` (then `PeerIdentityChanged` when
    /// it did, then the held fast-path events) and opens the frames that came early.
    pub fn install(&mut self, now: Instant, est: Established) -> Result<(), SdkError> {
        if !matches!(self.keys, Keys::Awaiting) {
            return Err(SdkError::Protocol("keys installed twice".into()));
        }
        let verdict = Verdict {
            code: est.code,
            peer: est.peer,
            identity_check: est.identity_check,
            peer_user: est.peer_user,
        };
        let mut first = vec![Event::E2eeEstablished {
            code: verdict.code.clone(),
            identity_check: verdict.identity_check,
            peer_user: verdict.peer_user.clone(),
        }];
        if verdict.identity_check == IdentityCheck::Changed {
            first.push(Event::PeerIdentityChanged { peer: verdict.peer });
        }
        self.events.push_front(first);
        for ev in std::mem::take(&mut self.held_events) {
            self.events.push(ev);
        }
        let next_periodic = match est.sealer.direction() {
            // The initiator runs the schedule, so the two never offer on one timer.
            crate::e2ee::Direction::AtoB => est.sealer.policy().hybrid_interval.map(|i| now + i),
            crate::e2ee::Direction::BtoA => None,
        };
        self.keys = Keys::Secure(Box::new(Secure {
            sealer: est.sealer,
            opener: est.opener,
            verdict,
            chain: est.chain,
            hybrid: hybrid::Hybrid {
                next_periodic,
                ..Default::default()
            },
        }));
        for frame in std::mem::take(&mut self.held) {
            self.buffered_before_keys += 1;
            self.open_and_deliver(now, frame);
        }
        Ok(())
    }

    /// Seals `frame` (on an E2EE call; the kind is authenticated) and cuts it into pieces
    /// of at most `max_datagram` bytes, each starting with `header` (the fast path's) or
    /// the QUIC media header.
    pub fn seal_and_split(
        &mut self,
        now: Instant,
        kind: MediaKind,
        frame: &[u8],
        max_datagram: usize,
        header: Option<&[u8]>,
    ) -> Result<Vec<Bytes>, SdkError> {
        let sealed;
        let body = match &mut self.keys {
            Keys::Plain => frame,
            Keys::Awaiting => return Err(SdkError::E2eeNotEstablished),
            Keys::Secure(s) => {
                let mut plain = Vec::new();
                padding::pad(self.padding, kind, frame, &mut plain);
                self.padding_bytes += (plain.len() - frame.len() - padding::TRAILER) as u64;
                let mut out = Vec::with_capacity(plain.len() + 64);
                let before = s.sealer.epoch();
                // The kind is SFrame metadata, so a relay cannot relabel audio as video.
                let after =
                    s.sealer
                        .seal_with_metadata_into(now, &[kind as u8], &plain, &mut out)?;
                if after != before {
                    self.events.push(Event::Rekeyed {
                        by_peer: false,
                        epoch: after,
                    });
                }
                sealed = out;
                &sealed[..]
            }
        };
        Ok(match header {
            Some(h) => self
                .fragmenter
                .split_with_header(kind, body, max_datagram, h)?,
            None => self.fragmenter.split(kind, body, max_datagram)?,
        })
    }

    /// Starts a new sending epoch now. Returns it.
    pub fn rekey(&mut self, now: Instant) -> Result<u64, SdkError> {
        let Keys::Secure(s) = &mut self.keys else {
            return Err(SdkError::E2eeNotEstablished);
        };
        let epoch = s.sealer.rekey(now)?;
        self.events.push(Event::Rekeyed {
            by_peer: false,
            epoch,
        });
        Ok(epoch)
    }

    /// One media datagram in the QUIC form (`MediaHeader | fragment`). Returns whether it
    /// completed a frame (delivered, held or dropped).
    pub fn handle_datagram(&mut self, now: Instant, datagram: Bytes) -> bool {
        let Ok(Some(frame)) = self.reassembler.push(datagram, now) else {
            return false;
        };
        match self.keys {
            Keys::Plain => self.delivered.push_back(frame),
            Keys::Awaiting => self.hold(frame),
            Keys::Secure(_) => self.open_and_deliver(now, frame),
        }
        true
    }

    fn hold(&mut self, frame: MediaFrame) {
        if self.held.len() >= MAX_FRAMES_BEFORE_KEYS {
            self.held.pop_front();
            self.dropped_before_keys += 1;
        }
        self.held.push_back(frame);
    }

    fn open_and_deliver(&mut self, now: Instant, frame: MediaFrame) {
        let Keys::Secure(s) = &mut self.keys else {
            return;
        };
        let mut out = Vec::with_capacity(frame.data.len());
        let res = s
            .opener
            .open_with_metadata_into(now, &[frame.kind as u8], &frame.data, &mut out);
        self.last_recv = s.opener.stats();
        match res {
            Ok(opened) => {
                if opened.switched_epoch {
                    Self::hybrid_saw_epoch(s, now, opened.epoch, &mut self.events);
                }
                if opened.switched_epoch {
                    self.events.push(Event::Rekeyed {
                        by_peer: true,
                        epoch: opened.epoch,
                    });
                }
                let Ok(inner) = padding::unpad(&out) else {
                    tracing::debug!("dropped a frame with a malformed padding trailer");
                    self.bad_padding += 1;
                    return;
                };
                let len = inner.len();
                out.truncate(len);
                let frame = MediaFrame {
                    kind: frame.kind,
                    data: out.into(),
                    seq: Some(FrameSeq {
                        epoch: opened.epoch,
                        counter: opened.ctr,
                    }),
                };
                if self.pending.is_some() {
                    self.hold(frame);
                } else {
                    self.delivered.push_back(frame);
                }
            }
            Err(e) => tracing::debug!(reason = e.as_str(), "dropped a frame that did not open"),
        }
    }

    /// One `Signal` payload from the peer: a key confirmation is the engine's; anything else
    /// is the app's (or the handshake driver's, before the keys).
    pub fn handle_signal(&mut self, now: Instant, payload: &[u8]) -> SignalUse {
        if crate::e2ee::pcs::is_pcs(payload) {
            self.on_pcs(now, payload);
            return SignalUse::Engine;
        }
        if !confirm::is_confirm(payload) {
            return SignalUse::App;
        }
        let Keys::Secure(s) = &mut self.keys else {
            // A confirmation before keys exist: nothing to check it with; not the app's.
            return SignalUse::Engine;
        };
        let opened = confirm::open(&mut s.opener, now, payload);
        self.last_recv = s.opener.stats();
        match opened {
            Ok(Confirm {
                kind: ConfirmKind::Request,
                nonce,
            }) => self.send_confirm(now, ConfirmKind::Reply, nonce),
            Ok(Confirm {
                kind: ConfirmKind::Reply,
                nonce,
            }) => {
                if self.pending.as_ref().is_some_and(|p| p.nonce == nonce) {
                    self.pending = None;
                    self.confirmations += 1;
                    self.delivered.extend(self.held.drain(..));
                    self.events.push(Event::KeysConfirmed);
                }
            }
            Err(e) => tracing::debug!(error = %e, "dropped a key confirmation"),
        }
        SignalUse::Engine
    }

    fn send_confirm(&mut self, now: Instant, kind: ConfirmKind, nonce: [u8; NONCE_LEN]) {
        let Keys::Secure(s) = &mut self.keys else {
            return;
        };
        match confirm::seal(&mut s.sealer, now, Confirm { kind, nonce }) {
            Ok(m) => self.transmit.push_back(m.into()),
            Err(e) => tracing::warn!(error = %e, "could not seal a key confirmation"),
        }
    }

    /// A relay notice, as an event for the app. On a keyed call the peer's return
    /// (`PeerResumed`, or `PeerJoined` on a new node) starts a key confirmation.
    pub fn handle_event(&mut self, now: Instant, ev: Event) {
        let peer_back = matches!(ev, Event::PeerResumed | Event::PeerJoined);
        let fast = matches!(
            ev,
            Event::FastPathBound { .. } | Event::FastPathFallback { .. }
        );
        if fast && matches!(self.keys, Keys::Awaiting) {
            self.held_events.push(ev);
            return;
        }
        self.events.push(ev);
        if peer_back && self.is_e2ee() {
            self.begin_confirmation(now);
        }
    }

    /// This side's connection changed (a resume, a move to another node) or the peer came
    /// back: until the peer proves it holds the keys, received media is held. A plain or
    /// not-yet-keyed call has nothing to confirm.
    pub fn begin_confirmation(&mut self, now: Instant) {
        if !self.is_e2ee() {
            return;
        }
        let mut nonce = [0u8; NONCE_LEN];
        if aws_lc_rs::rand::fill(&mut nonce).is_err() {
            tracing::warn!("no randomness for a key confirmation");
            return;
        }
        // A new confirmation while one is pending keeps the first one's warning time.
        let warn_at = match &self.pending {
            Some(p) => p.warn_at,
            None => Some(now + CONFIRM_WARN),
        };
        self.pending = Some(Pending {
            nonce,
            next_send: now + CONFIRM_RETRY,
            backoff: CONFIRM_RETRY,
            warn_at,
        });
        self.send_confirm(now, ConfirmKind::Request, nonce);
    }

    /// When [`Engine::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = match &self.keys {
            Keys::Secure(s) => s.hybrid.next_deadline(),
            _ => None,
        };
        [
            self.reassembler.next_deadline(),
            self.pending.as_ref().map(|p| p.next_send),
            self.pending.as_ref().and_then(|p| p.warn_at),
            c,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires incomplete frames and resends an unanswered confirmation request.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reassembler.expire(now);
        if let Some(p) = self.pending.as_mut() {
            if p.warn_at.is_some_and(|t| t <= now) {
                p.warn_at = None;
                self.events.push(Event::KeysUnconfirmed);
            }
        }
        let resend = match &mut self.pending {
            Some(p) if p.next_send <= now => {
                p.backoff = (p.backoff * 2).min(CONFIRM_RETRY_MAX);
                p.next_send = now + p.backoff;
                Some(p.nonce)
            }
            _ => None,
        };
        if let Some(nonce) = resend {
            self.send_confirm(now, ConfirmKind::Request, nonce);
        }
        self.hybrid_timeout(now);
    }

    /// Starts an in-call hybrid rekey now (post-compromise: new roots from fresh X25519 and
    /// ML-KEM-768 secrets, authenticated under the current keys). Rate-limited: one at a
    /// time, at least `hybrid::MIN_GAP` apart (`SdkError::RekeyLimited`).
    pub fn rekey_hybrid(&mut self, now: Instant) -> Result<(), SdkError> {
        let Keys::Secure(s) = &mut self.keys else {
            return Err(SdkError::E2eeNotEstablished);
        };
        if !s.hybrid.may_start(now) {
            return Err(SdkError::RekeyLimited);
        }
        let epoch = s.sealer.epoch() + crate::e2ee::pcs::EPOCH_JUMP;
        let (offer, msg) = crate::e2ee::pcs::offer(&mut s.sealer, now, epoch)
            .map_err(|e| SdkError::Protocol(e.to_string()))?;
        s.hybrid.offer = Some(offer);
        s.hybrid.last_started = Some(now);
        self.transmit.push_back(msg.into());
        Ok(())
    }

    /// Hybrid rekeys this call completed (both directions switched, as seen here).
    pub fn hybrid_rekeys(&self) -> u64 {
        match &self.keys {
            Keys::Secure(s) => s.hybrid.completed,
            _ => 0,
        }
    }

    fn hybrid_timeout(&mut self, now: Instant) {
        let Keys::Secure(s) = &mut self.keys else {
            return;
        };
        if let Some(r) = s.hybrid.resend_done.as_mut() {
            if r.next <= now {
                if r.tries >= hybrid::DONE_TRIES {
                    s.hybrid.resend_done = None;
                } else {
                    r.tries += 1;
                    r.backoff *= 2;
                    r.next = now + r.backoff;
                    let id = r.id;
                    if let Ok(m) = crate::e2ee::pcs::done(&mut s.sealer, now, id) {
                        self.transmit.push_back(m.into());
                    }
                }
            }
        }
        if s.hybrid.next_periodic.is_some_and(|t| t <= now) {
            s.hybrid.next_periodic = s.sealer.policy().hybrid_interval.map(|i| now + i);
            if let Err(e) = self.rekey_hybrid(now) {
                tracing::debug!(error = %e, "scheduled hybrid rekey skipped");
            }
        }
    }

    /// The peer's frames reached a new epoch: an awaited switch may be proven by it.
    fn hybrid_saw_epoch(s: &mut Secure, now: Instant, epoch: u64, events: &mut EventQueue) {
        if s.hybrid
            .resend_done
            .as_ref()
            .is_some_and(|r| r.answerer_epoch == epoch)
        {
            s.hybrid.resend_done = None;
            s.hybrid.completed += 1;
        }
        if s.hybrid
            .awaiting_done
            .as_ref()
            .is_some_and(|a| a.offerer_epoch == epoch)
        {
            Self::answerer_switch(s, now, events);
        }
    }

    fn answerer_switch(s: &mut Secure, now: Instant, events: &mut EventQueue) {
        let Some(a) = s.hybrid.awaiting_done.take() else {
            return;
        };
        s.chain = a.chain;
        match s.sealer.reroot(now, a.my_epoch, a.my_root) {
            Ok(epoch) => {
                s.hybrid.completed += 1;
                events.push(Event::Rekeyed {
                    by_peer: false,
                    epoch,
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not switch to the rekeyed root"),
        }
    }

    fn on_pcs(&mut self, now: Instant, payload: &[u8]) {
        use crate::e2ee::pcs::{self, PcsMsg};
        let Keys::Secure(s) = &mut self.keys else {
            return;
        };
        let msg = match pcs::open(&mut s.opener, now, payload) {
            Ok(m) => m,
            Err(e) => {
                self.last_recv = s.opener.stats();
                tracing::debug!(error = %e, "dropped a hybrid rekey message");
                return;
            }
        };
        self.last_recv = s.opener.stats();
        let dir = s.sealer.direction();
        let suite = s.sealer.suite();
        match msg {
            PcsMsg::Offer {
                id,
                epoch,
                x,
                ek,
                body,
            } => {
                if !hybrid::take_offer(&mut s.hybrid, dir) {
                    return;
                }
                let my_epoch = s.sealer.epoch() + pcs::EPOCH_JUMP;
                match pcs::answer(
                    &mut s.sealer,
                    now,
                    suite,
                    &s.chain,
                    id,
                    &x,
                    &ek,
                    &body,
                    my_epoch,
                ) {
                    Ok((m, keys)) => {
                        let (mine, peer, chain) = hybrid::split(dir, keys);
                        s.opener.expect_reroot(epoch, peer);
                        s.hybrid.awaiting_done = Some(hybrid::AwaitDone {
                            id,
                            offerer_epoch: epoch,
                            my_epoch,
                            my_root: mine,
                            chain,
                        });
                        self.transmit.push_back(m.into());
                    }
                    Err(e) => tracing::debug!(error = %e, "could not answer a hybrid rekey"),
                }
            }
            PcsMsg::Answer {
                id,
                epoch,
                x,
                ct,
                body,
            } => {
                let Some(offer) = s.hybrid.offer.take_if(|o| o.id == id) else {
                    return;
                };
                let my_epoch = offer.epoch;
                let keys = match pcs::finish(offer, suite, &s.chain, &x, &ct, &body) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::debug!(error = %e, "a hybrid rekey answer failed");
                        return;
                    }
                };
                let (mine, peer, chain) = hybrid::split(dir, keys);
                s.chain = chain;
                s.opener.expect_reroot(epoch, peer);
                if let Err(e) = s.sealer.reroot(now, my_epoch, mine) {
                    tracing::warn!(error = %e, "could not switch to the rekeyed root");
                    return;
                }
                self.events.push(Event::Rekeyed {
                    by_peer: false,
                    epoch: my_epoch,
                });
                if let Ok(m) = pcs::done(&mut s.sealer, now, id) {
                    self.transmit.push_back(m.into());
                }
                s.hybrid.resend_done = Some(hybrid::ResendDone {
                    id,
                    answerer_epoch: epoch,
                    next: now + hybrid::DONE_RETRY,
                    backoff: hybrid::DONE_RETRY,
                    tries: 1,
                });
            }
            PcsMsg::Done { id } => {
                if s.hybrid.awaiting_done.as_ref().is_some_and(|a| a.id == id) {
                    Self::answerer_switch(s, now, &mut self.events);
                }
            }
        }
    }

    pub fn note_peer_unavailable_token(&mut self, token: String) {
        self.peer_unavailable_token = Some(token);
    }

    pub fn take_peer_unavailable_token(&mut self) -> Option<String> {
        self.peer_unavailable_token.take()
    }

    /// A fast-path event (held back while the keys are awaited).
    pub fn push_fast_event(&mut self, ev: Event) {
        if matches!(self.keys, Keys::Awaiting) {
            self.held_events.push(ev);
        } else {
            self.events.push(ev);
        }
    }

    /// A driver event that does not depend on the keys (disconnected, migrated, ...).
    pub fn push_event(&mut self, ev: Event) {
        self.events.push(ev);
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next whole frame for the app (opened on an E2EE call).
    pub fn poll_frame(&mut self) -> Option<MediaFrame> {
        self.delivered.pop_front()
    }

    /// The next signal payload to send to the peer (a key confirmation).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn reassembly_stats(&self) -> ReassemblyStats {
        self.reassembler.stats()
    }

    /// Events shed by a full queue.
    pub fn events_shed(&self) -> u64 {
        self.events.shed()
    }

    /// E2EE counters; `None` on a plain call or before the keys.
    pub fn e2ee_stats(&self) -> Option<E2eeStats> {
        let Keys::Secure(s) = &self.keys else {
            return None;
        };
        let send = s.sealer.stats();
        let recv = self.last_recv;
        Some(E2eeStats {
            frames_sealed: send.frames_sealed,
            frames_opened: recv.frames_opened,
            rekeys_sent: send.rekeys,
            rekeys_received: recv.rekeys,
            rejected_tampered: recv.auth_failed,
            rejected_replayed: recv.replayed,
            rejected_stale_epoch: recv.stale_epoch,
            rejected_unknown_kid: recv.unknown_kid,
            rejected_malformed: recv.malformed + self.bad_padding,
            rejected_too_late: recv.too_late,
            padding_bytes_sent: self.padding_bytes,
            buffered_before_keys: self.buffered_before_keys,
            dropped_before_keys: self.dropped_before_keys,
            confirmations: self.confirmations,
        })
    }
}
