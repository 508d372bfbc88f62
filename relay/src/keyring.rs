//! The token keys a running relay trusts, swapped whole on reload (SIGHUP): each join reads
//! the keyring current at that moment without a lock; a reload whose configuration or key
//! file is broken changes nothing and says why.
//!
//! Owns the live keyring and its series (`duet_token_keys_loaded`,
//! `duet_token_key_reloads_total{result}`). Reading key files is `config::keys`';
//! verifying tokens is `duet_proto::token`'s. Sessions already joined are not looked at
//! again: removing a key refuses new joins (and resumes) under it, never a live call.

use std::sync::Arc;

use arc_swap::ArcSwap;
use duet_proto::{TokenKeyring, VerifyingKey};
use metrics::{Counter, Gauge, Label};

use crate::config::{Config, ConfigError};
use crate::metrics::RelayMetrics;

/// The keyring joins are verified with; see the module docs.
pub struct LiveKeyring {
    ring: ArcSwap<TokenKeyring>,
    loaded: Gauge,
    reloaded: Counter,
    reload_failed: Counter,
}

impl std::fmt::Debug for LiveKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring.load();
        f.debug_struct("LiveKeyring")
            .field("ids", &ring.ids().collect::<Vec<_>>())
            .finish()
    }
}

impl LiveKeyring {
    pub fn new(keys: Vec<VerifyingKey>, metrics: &RelayMetrics) -> Arc<Self> {
        let result = |r: &'static str| {
            metrics.counter(
                "duet_token_key_reloads_total",
                vec![Label::from_static_parts("result", r)],
            )
        };
        let live = Self {
            loaded: metrics.gauge("duet_token_keys_loaded"),
            reloaded: result("ok"),
            reload_failed: result("failed"),
            ring: ArcSwap::from_pointee(TokenKeyring::default()),
        };
        live.reloaded.increment(0);
        live.reload_failed.increment(0);
        live.swap(keys);
        Arc::new(live)
    }

    /// A keyring of its own, counted nowhere (the session core's unit tests).
    pub fn unmetered(ring: TokenKeyring) -> Arc<Self> {
        Arc::new(Self {
            ring: ArcSwap::from_pointee(ring),
            loaded: Gauge::noop(),
            reloaded: Counter::noop(),
            reload_failed: Counter::noop(),
        })
    }

    /// The keyring in force now. Cheap (an atomic load); hold it only for one verification.
    pub fn current(&self) -> arc_swap::Guard<Arc<TokenKeyring>> {
        self.ring.load()
    }

    /// The keys in force now.
    pub fn keys(&self) -> Vec<VerifyingKey> {
        self.ring.load().keys().to_vec()
    }

    fn swap(&self, keys: Vec<VerifyingKey>) {
        self.loaded.set(keys.len() as f64);
        self.ring.store(Arc::new(TokenKeyring::new(keys)));
    }

    /// Counts a reload that failed before any key was read (the configuration file).
    pub(crate) fn reload_failed(&self) {
        self.reload_failed.increment(1);
    }

    /// Loads `cfg`'s `token_keys` (and `allow_legacy_hmac_tokens`) and, only if every key
    /// reads and parses, puts them in force at once; returns how many. On error the keys in
    /// force stay as they were.
    pub fn reload(&self, cfg: &Config) -> Result<usize, ConfigError> {
        let loaded = cfg.validate().and_then(|()| cfg.load_token_keys());
        match loaded {
            Ok(keys) => {
                let n = keys.len();
                self.swap(keys);
                self.reloaded.increment(1);
                Ok(n)
            }
            Err(e) => {
                self.reload_failed.increment(1);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_proto::{JoinClaims, JoinToken, SigningKey, TokenError, VerifyOptions};

    fn token(key: &SigningKey) -> String {
        let claims = JoinClaims::builder(
            "s".parse().unwrap(),
            "u".parse().unwrap(),
            "d".parse().unwrap(),
        )
        .issued_at(100)
        .build()
        .unwrap();
        JoinToken::mint(key, &claims)
    }

    fn key_file(dir: &std::path::Path, key: &SigningKey) -> std::path::PathBuf {
        let path = dir.join(format!("{}.pub", key.id()));
        std::fs::write(&path, key.verifying_key().public_hex().unwrap()).unwrap();
        path
    }

    fn cfg(dir: &std::path::Path, keys: &[(&str, std::path::PathBuf)]) -> Config {
        Config {
            data_dir: dir.to_owned(),
            token_keys: keys
                .iter()
                .map(|(id, p)| crate::TokenKeyConfig {
                    id: (*id).to_owned(),
                    public_key_file: Some(p.clone()),
                    secret_file: None,
                })
                .collect(),
            ..Config::default()
        }
    }

    /// A reload swaps the whole keyring; a broken key file or a bad section keeps the old
    /// one and is counted.
    #[test]
    fn reload_swaps_whole_and_a_broken_file_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            SigningKey::generate("old").unwrap(),
            SigningKey::generate("new").unwrap(),
        );
        let (old_pub, new_pub) = (key_file(dir.path(), &old), key_file(dir.path(), &new));
        let m = RelayMetrics::new();
        let both = cfg(dir.path(), &[("old", old_pub), ("new", new_pub.clone())]);
        let live = LiveKeyring::new(both.load_token_keys().unwrap(), &m);
        let opts = VerifyOptions::at(200);
        assert!(live.current().verify(&token(&old), &opts).is_ok());
        assert!(m.render().contains("duet_token_keys_loaded 2"));

        assert_eq!(
            live.reload(&cfg(dir.path(), &[("new", new_pub.clone())]))
                .unwrap(),
            1
        );
        assert!(matches!(
            live.current().verify(&token(&old), &opts),
            Err(TokenError::UnknownKey(_))
        ));
        assert!(live.current().verify(&token(&new), &opts).is_ok());

        let broken = dir.path().join("broken.pub");
        std::fs::write(&broken, "not a key").unwrap();
        let e = live
            .reload(&cfg(dir.path(), &[("new", new_pub.clone()), ("b", broken)]))
            .unwrap_err();
        assert!(e.to_string().contains("\"b\""), "{e}");
        let missing = dir.path().join("missing.pub");
        assert!(live.reload(&cfg(dir.path(), &[("m", missing)])).is_err());
        let dup = cfg(dir.path(), &[("new", new_pub.clone()), ("new", new_pub)]);
        assert!(live.reload(&dup).is_err(), "validation runs too");
        assert_eq!(live.keys().len(), 1, "the keys in force did not change");
        assert!(live.current().verify(&token(&new), &opts).is_ok());
        let text = m.render();
        assert!(text.contains("duet_token_keys_loaded 1"), "{text}");
        assert!(
            text.contains("duet_token_key_reloads_total{result=\"failed\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("duet_token_key_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
    }
}
