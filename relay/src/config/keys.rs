//! Token key files: the keys `serve` trusts (hex Ed25519 public keys, or legacy HMAC
//! secrets behind a switch), the default key pair generated in the data directory, and the
//! signing key `token mint` uses. `serve` never reads a signing key.
//!
//! Owns reading, generating and checking those files; the token format and verification are
//! `duet_proto::token`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use duet_proto::{SigningKey, TokenKeyring, VerifyOptions, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{invalid, write_private, Config, ConfigError};

/// The generated default token signing key (hex Ed25519 seed) inside the data directory:
/// for `duet-relay token mint` on a single-node setup. `serve` never reads it.
pub const DEFAULT_SIGNING_KEY_FILE: &str = "token-signing-key";
/// Its public half (hex), which is what `serve` trusts when no key is configured.
pub const DEFAULT_VERIFYING_KEY_FILE: &str = "token-key.pub";
/// Key id of the generated default token key.
pub const DEFAULT_TOKEN_KEY_ID: &str = "default";

/// A trusted token key: its id and the file holding its Ed25519 public key (hex), or, for a
/// legacy HMAC key, the file holding the shared secret (hex, at least 32 bytes; only with
/// `allow_legacy_hmac_tokens`). On the command line: `--token-key ID=FILE` (a public key
/// file; repeatable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

impl FromStr for TokenKeyConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, file) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ID=FILE, got {s:?}"))?;
        Ok(Self {
            id: id.to_owned(),
            public_key_file: Some(PathBuf::from(file)),
            secret_file: None,
        })
    }
}

impl Config {
    /// Every configured key has a unique, well-formed id and exactly one file of a kind
    /// this configuration accepts.
    pub(super) fn validate_token_keys(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for k in &self.token_keys {
            if !seen.insert(k.id.as_str()) {
                return Err(invalid(
                    "token_keys",
                    format!("key id {:?} appears twice", k.id),
                ));
            }
            // Checks the id's syntax with a throwaway key; the real one is read at start.
            VerifyingKey::ed25519(k.id.clone(), &[0u8; 32])
                .map_err(|e| invalid("token_keys", format!("key id {:?}: {e}", k.id)))?;
            match (&k.public_key_file, &k.secret_file) {
                (Some(_), None) => {}
                (None, Some(_)) if self.allow_legacy_hmac_tokens => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        "token_keys",
                        format!(
                            "key {:?} is a legacy HMAC secret (anyone holding it can mint); \
                             set allow_legacy_hmac_tokens = true to accept it",
                            k.id
                        ),
                    ))
                }
                _ => {
                    return Err(invalid(
                        "token_keys",
                        format!(
                            "key {:?} needs exactly one of public_key_file or secret_file",
                            k.id
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Path of the generated default signing key (for `token mint`; `serve` never reads it).
    pub fn default_signing_key_path(&self) -> PathBuf {
        self.data_dir.join(DEFAULT_SIGNING_KEY_FILE)
    }

    /// Path of the generated default key's public half.
    pub fn default_verifying_key_path(&self) -> PathBuf {
        self.data_dir.join(DEFAULT_VERIFYING_KEY_FILE)
    }

    /// The keys this relay verifies tokens with: the configured ones, or with none
    /// configured the default key's public half (the key pair is generated in the data
    /// directory on first use). Only public keys, unless legacy HMAC keys are configured.
    pub fn load_token_keys(&self) -> Result<Vec<VerifyingKey>, ConfigError> {
        if self.token_keys.is_empty() {
            return Ok(vec![self.ensure_default_key_pair()?]);
        }
        self.token_keys
            .iter()
            .map(|k| {
                let (path, legacy) = match (&k.public_key_file, &k.secret_file) {
                    (Some(p), _) => (p, false),
                    (None, Some(p)) => (p, true),
                    (None, None) => return Err(invalid("token_keys", "a key without a file")),
                };
                let text = read_key_file(path)?;
                let key = if legacy {
                    duet_proto::hex::decode(&text)
                        .ok_or_else(|| not_hex(path))
                        .and_then(|secret| {
                            VerifyingKey::legacy_hmac(k.id.clone(), &secret)
                                .map_err(|e| key_error(&k.id, path, e))
                        })?
                } else {
                    VerifyingKey::ed25519_from_hex(k.id.clone(), &text)
                        .map_err(|e| key_error(&k.id, path, e))?
                };
                Ok(key)
            })
            .collect()
    }

    /// The default key pair in the data directory: its public half, after generating both
    /// files if the public one is missing.
    fn ensure_default_key_pair(&self) -> Result<VerifyingKey, ConfigError> {
        let public = self.default_verifying_key_path();
        match std::fs::read_to_string(&public) {
            Ok(text) => VerifyingKey::ed25519_from_hex(DEFAULT_TOKEN_KEY_ID, &text)
                .map_err(|e| key_error(DEFAULT_TOKEN_KEY_ID, &public, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(DEFAULT_TOKEN_KEY_ID)
                    .map_err(|e| key_error(DEFAULT_TOKEN_KEY_ID, &public, e))?;
                let seed = key.seed_hex().unwrap_or_default();
                write_private(
                    &self.default_signing_key_path(),
                    format!("{}\n", seed.as_str()).as_bytes(),
                )?;
                let vk = key.verifying_key();
                let hex = vk.public_hex().unwrap_or_default();
                write_private(&public, format!("{hex}\n").as_bytes())?;
                Ok(vk)
            }
            Err(source) => Err(ConfigError::Io {
                what: "cannot read token key",
                path: public,
                source,
            }),
        }
    }

    /// The key `token mint` signs with: `path` (hex Ed25519 seed) under `id`, or by default
    /// the data directory's generated key pair (created if missing).
    pub fn load_signing_key(
        &self,
        path: Option<&Path>,
        id: Option<&str>,
    ) -> Result<SigningKey, ConfigError> {
        let default = self.default_signing_key_path();
        let (path, id) = match path {
            Some(p) => (p.to_owned(), id.unwrap_or(DEFAULT_TOKEN_KEY_ID)),
            None => {
                if !default.exists() {
                    self.ensure_default_key_pair()?;
                }
                (default, id.unwrap_or(DEFAULT_TOKEN_KEY_ID))
            }
        };
        let text = zeroize::Zeroizing::new(read_key_file(&path)?);
        SigningKey::ed25519_from_hex(id, &text).map_err(|e| key_error(id, &path, e))
    }

    pub fn keyring(keys: &[VerifyingKey]) -> TokenKeyring {
        TokenKeyring::new(keys.to_vec())
    }

    /// How tokens are checked at `now` (Unix seconds).
    pub fn verify_options(&self, now: u64) -> VerifyOptions {
        VerifyOptions {
            now,
            skew_secs: self.token_clock_skew_secs,
            max_lifetime_secs: self.token_max_lifetime_secs,
        }
    }
}

fn read_key_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        what: "cannot read token key",
        path: path.to_owned(),
        source,
    })
}

fn not_hex(path: &Path) -> ConfigError {
    invalid("token_keys", format!("{} is not hex", path.display()))
}

fn key_error(id: &str, path: &Path, e: duet_proto::TokenError) -> ConfigError {
    invalid(
        "token_keys",
        format!("key {id:?} ({}): {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_token_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let k1 = cfg.load_token_keys().unwrap();
        let k2 = cfg.load_token_keys().unwrap();
        assert_eq!(k1[0].id(), "default");
        assert!(
            k1[0].public_key().is_some(),
            "serve holds a public key only"
        );
        let signer = cfg.load_signing_key(None, None).unwrap();
        let claims = duet_proto::JoinClaims::builder(
            "s".parse().unwrap(),
            "u".parse().unwrap(),
            "d".parse().unwrap(),
        )
        .issued_at(1)
        .ttl(Duration::from_secs(99))
        .build()
        .unwrap();
        let t = duet_proto::JoinToken::mint(&signer, &claims);
        assert!(TokenKeyring::new(k2)
            .verify(&t, &cfg.verify_options(2))
            .is_ok());
        let text = std::fs::read_to_string(cfg.default_signing_key_path()).unwrap();
        assert_eq!(duet_proto::hex::decode(&text).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cfg.default_signing_key_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the signing key is private");
        }
    }

    #[test]
    fn legacy_hmac_keys_need_the_switch() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hmac");
        std::fs::write(&secret, duet_proto::hex::encode(&[4u8; 32])).unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_owned(),
            token_keys: vec![TokenKeyConfig {
                id: "old".into(),
                public_key_file: None,
                secret_file: Some(secret),
            }],
            ..Config::default()
        };
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("allow_legacy_hmac_tokens"), "{e}");
        cfg.allow_legacy_hmac_tokens = true;
        cfg.validate().unwrap();
        let keys = cfg.load_token_keys().unwrap();
        assert_eq!(keys[0].alg(), duet_proto::TokenAlg::LegacyHmac);
        let e = Config {
            token_max_lifetime_secs: 10,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("token_max_lifetime_secs"), "{e}");
    }
}
