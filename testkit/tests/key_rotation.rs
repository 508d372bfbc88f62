//! Token key rotation under load, through the real `duet-relay` process: two token keys
//! live (`[[token_keys]]` in its config file), calls joined under each and carrying media
//! both ways; then the old key is removed from the file and the relay gets SIGHUP.
//!
//! What must hold: no call is dropped (no end, no peer-left, no disconnect; media keeps
//! arriving through the reload), a new join with the old key is refused `unknown_key`, a
//! join with the new key works; a later SIGHUP with a broken key file keeps the keys in
//! force, and the relay logs why. On the code before this test the reload changed nothing:
//! SIGHUP re-read only the certificate, so the old key's join was still accepted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use duet_proto::{RefusalReason, SigningKey};
use duet_sdk::{Call, Client, SdkError};
use duet_testkit::sdk::{assert_media_flows, carry_media, connect_options, MediaFlow};
use duet_testkit::{metric, scrape, sid, RelayProcess, RelayUnderTest, STEP};

/// The relay process, seen by clients whose tokens are signed with `key`.
struct SignedBy<'a> {
    relay: &'a RelayProcess,
    key: &'a SigningKey,
}

impl RelayUnderTest for SignedBy<'_> {
    fn quic_addr(&self) -> std::net::SocketAddr {
        self.relay.quic_addr()
    }
    fn ops_addr(&self) -> std::net::SocketAddr {
        self.relay.ops_addr()
    }
    fn cert_pem(&self) -> Vec<u8> {
        self.relay.cert_pem()
    }
    fn signer(&self) -> SigningKey {
        self.key.clone()
    }
}

fn write_config(path: &Path, keys: &[(&str, &Path)]) -> Result<()> {
    let mut text = String::from("node_id = \"rot-node\"\n");
    for (id, file) in keys {
        text.push_str(&format!(
            "[[token_keys]]\nid = \"{id}\"\npublic_key_file = \"{}\"\n",
            file.display()
        ));
    }
    // Written whole, then renamed: the relay never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

fn public_file(dir: &Path, key: &SigningKey) -> Result<PathBuf> {
    let path = dir.join(format!("{}.pub", key.id()));
    std::fs::write(&path, key.verifying_key().public_hex().context("ed25519")?)?;
    Ok(path)
}

async fn join(relay: &impl RelayUnderTest, session: &str, user: &str) -> Result<Call, SdkError> {
    let token = relay.token(session, user, &format!("{user}-dev"));
    let client = Client::connect(relay.quic_addr(), token, connect_options(relay)).await?;
    client.join(sid(session)).await
}

async fn pair(relay: &impl RelayUnderTest, session: &str) -> Result<(Arc<Call>, Arc<Call>)> {
    let a = join(relay, session, "alice").await?;
    let b = join(relay, session, "bob").await?;
    assert_media_flows(&a, &b).await?;
    Ok((Arc::new(a), Arc::new(b)))
}

/// Waits until `series` on the relay's `/metrics` equals `want`.
async fn wait_series(relay: &RelayProcess, series: &str, want: f64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let v = metric(&scrape(relay.ops_addr()).await, series);
        if v == want {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{series} is {v}, want {want}; stderr:\n{}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn removing_a_token_key_refuses_its_new_joins_and_drops_no_call() -> Result<()> {
    duet_testkit::init_tracing();
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let old = SigningKey::generate("old-2026")?;
    let new = SigningKey::generate("new-2027")?;
    let (old_pub, new_pub) = (
        public_file(dir.path(), &old)?,
        public_file(dir.path(), &new)?,
    );
    let config = dir.path().join("relay.toml");
    write_config(&config, &[("old-2026", &old_pub), ("new-2027", &new_pub)])?;
    let relay = RelayProcess::builder()
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .start()?;
    let under_old = SignedBy {
        relay: &relay,
        key: &old,
    };
    let under_new = SignedBy {
        relay: &relay,
        key: &new,
    };

    rt.block_on(async {
        wait_series(&relay, "duet_token_keys_loaded", 2.0).await?;
        let mut calls = Vec::new();
        for i in 0..3 {
            calls.push(pair(&under_old, &format!("rot-old-{i}")).await?);
            calls.push(pair(&under_new, &format!("rot-new-{i}")).await?);
        }
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let flows: Vec<Arc<MediaFlow>> = calls
            .iter()
            .flat_map(|(a, b)| {
                [
                    carry_media(a.clone(), b.clone(), stop.clone()),
                    carry_media(b.clone(), a.clone(), stop.clone()),
                ]
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // The rotation: the old key leaves the file; SIGHUP.
        write_config(&config, &[("new-2027", &new_pub)])?;
        relay.sighup()?;
        wait_series(&relay, "duet_token_key_reloads_total{result=\"ok\"}", 1.0).await?;
        wait_series(&relay, "duet_token_keys_loaded", 1.0).await?;

        match join(&under_old, "rot-after-old", "carol").await {
            Err(SdkError::Refused(RefusalReason::UnknownKey)) => {}
            Err(e) => anyhow::bail!("the old key's join: {e}, want unknown_key"),
            Ok(_) => anyhow::bail!("a join with the removed key was accepted"),
        }
        let fresh = pair(&under_new, "rot-after-new").await?;

        // A broken key file on the next SIGHUP: the keys in force stay, the log says why.
        let broken = dir.path().join("broken.pub");
        std::fs::write(&broken, "this is not a key")?;
        write_config(&config, &[("new-2027", &new_pub), ("broken", &broken)])?;
        relay.sighup()?;
        wait_series(
            &relay,
            "duet_token_key_reloads_total{result=\"failed\"}",
            1.0,
        )
        .await?;
        wait_series(&relay, "duet_token_keys_loaded", 1.0).await?;
        let again = pair(&under_new, "rot-after-broken").await?;
        match join(&under_old, "rot-broken-old", "carol").await {
            Err(SdkError::Refused(RefusalReason::UnknownKey)) => {}
            other => anyhow::bail!("old key after a failed reload: {:?}", other.map(|_| ())),
        }

        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, f) in flows.iter().enumerate() {
            let (sent, got) = (f.sent(), f.received());
            let broken = f.broken();
            ensure!(broken.is_empty(), "flow {i} broke: {broken:?}");
            // Loopback: nothing should be lost; a loaded 2-core box may delay the last few.
            ensure!(
                sent > 20 && got * 100 >= sent * 95,
                "flow {i}: {got} of {sent} frames arrived"
            );
        }
        for (a, b) in calls.iter().chain([&fresh, &again]) {
            assert_media_flows(a, b).await?;
        }
        let text = scrape(relay.ops_addr()).await;
        ensure!(metric(&text, "duet_sessions") == 8.0, "sessions: {text}");
        ensure!(
            metric(&text, "duet_refusals_total{reason=\"unknown_key\"}") == 2.0,
            "unknown_key refusals: {text}"
        );
        anyhow::Ok(())
    })?;
    let log = relay.stderr();
    ensure!(log.contains("token keys reloaded"), "{log}");
    ensure!(
        log.contains("token key reload failed; keeping the old keys") && log.contains("broken"),
        "{log}"
    );
    Ok(())
}
