//! From the administrator's policy to the relay's answer: a token minted under each case
//! of the model (`duet_policy::issue::mint_token`, as an app backend or `duet-relay token
//! mint` does) and what a real relay on loopback says to its join, including telling the
//! waiting peer that E2EE is unavailable (and only why).

use std::time::Duration;

use anyhow::{bail, Result};
use duet_policy::issue::mint_token;
use duet_policy::{Actor, CallingE2ee, Change, GroupName, PolicyName, SqliteStore, Store};
use duet_proto::{DeviceId, E2eeClaim, RefusalReason, UserId};
use duet_sdk::{Call, Client, Event, SdkError};
use duet_testkit::sdk::{a_then_b, e2ee_config, issuer_keys};
use duet_testkit::sdk::{connect_options, expect_event, next_event};
use duet_testkit::{sid, RelayUnderTest, TestRelay};

struct World {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Self {
            store: SqliteStore::open(dir.path().join("policy.db"))?,
            _dir: dir,
        })
    }

    fn change(&self, c: Change) -> Result<()> {
        self.store.apply(&Actor::new("test", "test"), &c)?;
        Ok(())
    }

    fn set(&self, name: &str, c: CallingE2ee) -> Result<()> {
        self.change(Change::SetPolicy {
            name: PolicyName::new(name)?,
            calling_e2ee: c,
        })
    }

    fn grant(&self, user: &str, policy: Option<&str>) -> Result<()> {
        self.change(Change::GrantUser {
            user: UserId::new(user)?,
            policy: policy.map(PolicyName::new).transpose()?,
        })
    }

    fn switch(&self, user: &str, on: bool) -> Result<()> {
        self.change(Change::SetUserE2ee {
            user: UserId::new(user)?,
            on,
        })
    }

    fn compliance(&self, user: &str, on: bool) -> Result<()> {
        self.change(Change::SetComplianceRecording {
            user: UserId::new(user)?,
            on,
        })
    }

    /// What an app backend does: evaluate the policy and mint with the relay's key.
    fn mint(
        &self,
        relay: &TestRelay,
        session: &str,
        user: &str,
        device: &str,
    ) -> Result<(String, E2eeClaim)> {
        let (token, eff) = mint_token(
            &self.store,
            &relay.signer(),
            sid(session),
            UserId::new(user)?,
            DeviceId::new(device)?,
            Duration::from_secs(600),
            vec![relay.node_id().clone()],
        )?;
        Ok((token, eff.claim))
    }

    async fn join(
        &self,
        relay: &TestRelay,
        session: &str,
        user: &str,
        device: &str,
    ) -> Result<Result<Call, RefusalReason>> {
        let (token, _) = self.mint(relay, session, user, device)?;
        let client = Client::connect(relay.quic_addr(), token, connect_options(relay)).await?;
        match client.join(sid(session)).await {
            Ok(call) => Ok(Ok(call)),
            Err(SdkError::Refused(r)) => Ok(Err(r)),
            Err(e) => bail!("join failed without a refusal: {e}"),
        }
    }
}

/// Alice (allowed) waits in `session`; `user` joins under whatever the policy says.
/// Returns the relay's answer to the join and, on a refusal, checks the waiting peer was
/// told exactly the claim.
async fn case(
    w: &World,
    relay: &TestRelay,
    session: &str,
    user: &str,
    device: &str,
) -> Result<Result<Call, RefusalReason>> {
    let alice = match w.join(relay, session, "alice", "phone").await? {
        Ok(c) => c,
        Err(r) => bail!("alice should be allowed, got {r}"),
    };
    let (_, claim) = w.mint(relay, session, user, device)?;
    let answer = w.join(relay, session, user, device).await?;
    match (&answer, claim.refusal()) {
        (Err(r), Some(want)) => {
            assert_eq!(*r, want, "the relay refuses with the claim's code");
            let ev = next_event(&alice).await?;
            assert_eq!(
                ev,
                Event::PeerE2eeUnavailable(claim),
                "the waiting peer learns only the reason"
            );
        }
        (Ok(_), None) => expect_event(&alice, Event::PeerJoined).await?,
        (a, want) => bail!(
            "claim {claim:?} (refusal {want:?}) but the relay answered {:?}",
            a.as_ref().err()
        ),
    }
    let _ = alice.leave().await;
    Ok(answer)
}

#[tokio::test]
async fn each_policy_case_gets_its_answer_from_the_relay() -> Result<()> {
    let relay = TestRelay::start().await;
    let w = World::new()?;
    // Alice is the waiting peer in every case: a pilot policy and her switch on.
    w.set("Pilot", CallingE2ee::DisabledUserOverride)?;
    w.grant("alice", Some("Pilot"))?;
    w.switch("alice", true)?;

    // Out of the box, Global is disabled: even with bob's switch on.
    w.switch("bob", true)?;
    let r = case(&w, &relay, "c1", "bob", "phone").await?;
    assert_eq!(r.err(), Some(RefusalReason::PolicyDisabled));

    // Enabled for the whole tenant, but bob's switch is off.
    w.set("Global", CallingE2ee::DisabledUserOverride)?;
    w.switch("bob", false)?;
    let r = case(&w, &relay, "c2", "bob", "phone").await?;
    assert_eq!(r.err(), Some(RefusalReason::UserNotEnabled));

    // Bob turns it on: he joins, and the call is E2EE.
    w.switch("bob", true)?;
    let r = case(&w, &relay, "c3", "bob", "phone").await?;
    assert!(r.is_ok());
    drop(r);

    // A named policy granted to one user: Global closed again, only dave gets Pilot.
    w.set("Global", CallingE2ee::Disabled)?;
    w.grant("dave", Some("Pilot"))?;
    w.switch("dave", true)?;
    assert!(case(&w, &relay, "c4", "dave", "phone").await?.is_ok());
    let r = case(&w, &relay, "c5", "bob", "phone").await?;
    assert_eq!(
        r.err(),
        Some(RefusalReason::PolicyDisabled),
        "bob was not granted it"
    );

    // Unassigning dave returns him to Global (disabled).
    w.grant("dave", None)?;
    let r = case(&w, &relay, "c6", "dave", "phone").await?;
    assert_eq!(r.err(), Some(RefusalReason::PolicyDisabled));

    // Group ranks: erin's lowest-ranked group grants Pilot; then a lower rank that is closed.
    w.set("Closed", CallingE2ee::Disabled)?;
    w.change(Change::GrantGroup {
        group: GroupName::new("eng")?,
        policy: Some(PolicyName::new("Pilot")?),
        rank: Some(2),
    })?;
    w.change(Change::SetUserGroups {
        user: UserId::new("erin")?,
        groups: [GroupName::new("eng")?, GroupName::new("legal")?].into(),
    })?;
    w.switch("erin", true)?;
    assert!(case(&w, &relay, "c7", "erin", "phone").await?.is_ok());
    w.change(Change::GrantGroup {
        group: GroupName::new("legal")?,
        policy: Some(PolicyName::new("Closed")?),
        rank: Some(1),
    })?;
    let r = case(&w, &relay, "c8", "erin", "phone").await?;
    assert_eq!(r.err(), Some(RefusalReason::PolicyDisabled));

    // Compliance recording beats everything, even a direct grant and the switch on.
    w.grant("dave", Some("Pilot"))?;
    w.compliance("dave", true)?;
    let r = case(&w, &relay, "c9", "dave", "phone").await?;
    assert_eq!(r.err(), Some(RefusalReason::ComplianceRecording));
    Ok(())
}

#[tokio::test]
async fn the_switch_follows_the_user_to_a_second_device() -> Result<()> {
    let relay = TestRelay::start().await;
    let w = World::new()?;
    w.set("Global", CallingE2ee::DisabledUserOverride)?;
    w.switch("alice", true)?;

    // Bob turned it on once (on his phone, say): his laptop's token carries the same.
    w.switch("bob", true)?;
    for device in ["phone", "laptop"] {
        assert_eq!(w.mint(&relay, "d", "bob", device)?.1, E2eeClaim::Allowed);
    }
    assert!(case(&w, &relay, "d1", "bob", "laptop").await?.is_ok());

    // He turns it off: both devices now get the same refusal.
    w.switch("bob", false)?;
    for (i, device) in ["phone", "laptop"].into_iter().enumerate() {
        let r = case(&w, &relay, &format!("d2-{i}"), "bob", device).await?;
        assert_eq!(r.err(), Some(RefusalReason::UserNotEnabled), "{device}");
    }
    Ok(())
}

/// `required`, end to end: the store's policy becomes `Required` in the minted token
/// whatever the user's switch; the real relay refuses that token's plain join
/// (`E2eeRequired`), and two users under it make an end-to-end encrypted call.
#[tokio::test]
async fn a_required_policy_refuses_plain_joins_at_the_relay() -> Result<()> {
    let relay = TestRelay::start().await;
    let w = World::new()?;
    w.set("Secure", CallingE2ee::Required)?;
    w.grant("rita", Some("Secure"))?;
    w.grant("sam", Some("Secure"))?;
    let (token, claim) = w.mint(&relay, "r1", "rita", "phone")?;
    assert_eq!(
        claim,
        E2eeClaim::Required,
        "her switch is off: still required"
    );

    let client = Client::connect(relay.quic_addr(), token, connect_options(&relay)).await?;
    match client.join(sid("r1")).await {
        Err(SdkError::Refused(r)) => assert_eq!(r, RefusalReason::E2eeRequired),
        Ok(_) => bail!("a plain join under `required` was accepted"),
        Err(e) => bail!("expected the E2eeRequired refusal, got {e}"),
    }

    let join = |user: &'static str| {
        let (token, _) = w.mint(&relay, "r2", user, "phone").expect("mint");
        let opts = connect_options(&relay);
        let addr = relay.quic_addr();
        let mut cfg = e2ee_config(true);
        cfg.token_keys = issuer_keys(&relay);
        async move {
            let client = Client::connect(addr, token, opts).await?;
            client.join_e2ee(sid("r2"), cfg).await
        }
    };
    let (a, b) = a_then_b(&relay, join("rita"), join("sam")).await;
    let (a, b) = (a?, b?);
    assert!(a.is_e2ee() && b.is_e2ee());
    assert_eq!(a.security_code(), b.security_code(), "one key agreement");
    let _ = (a.leave().await, b.leave().await);
    Ok(())
}
