//! The QUIC stateless-reset key: the secret a relay derives each connection's reset token
//! from. It outlives the process (a file in the data directory, made on first start, or a
//! configured file), so after a crash and a restart on the same address the new process's
//! resets carry the tokens old clients hold, and they learn at their next packet that
//! their connection is gone instead of waiting out an idle timeout.

use std::path::PathBuf;

use super::{invalid, write_private, Config, ConfigError};

/// The generated key's file name in the data directory.
pub const RESET_KEY_FILE: &str = "stateless-reset-key";

/// Bytes of a generated key; a configured one needs at least this many.
const KEY_BYTES: usize = 32;

impl Config {
    /// Where the stateless-reset key is read from.
    pub fn stateless_reset_key_path(&self) -> PathBuf {
        self.stateless_reset_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(RESET_KEY_FILE))
    }

    /// The stateless-reset key: the configured file's, or the data directory's (generated
    /// now if missing).
    pub fn stateless_reset_key(&self) -> Result<Vec<u8>, ConfigError> {
        let path = self.stateless_reset_key_path();
        if self.stateless_reset_key_file.is_none() && !path.exists() {
            let key: [u8; KEY_BYTES] = rand::random();
            write_private(&path, duet_proto::hex::encode(&key).as_bytes())?;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            what: "cannot read the stateless-reset key",
            path: path.clone(),
            source,
        })?;
        let key = duet_proto::hex::decode(text.trim())
            .filter(|k| k.len() >= KEY_BYTES)
            .ok_or_else(|| {
                invalid(
                    "stateless_reset_key_file",
                    format!(
                        "{} must hold at least {KEY_BYTES} bytes in hex",
                        path.display()
                    ),
                )
            })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_and_bad_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let k1 = cfg.stateless_reset_key().unwrap();
        assert_eq!(k1.len(), KEY_BYTES);
        assert_eq!(
            cfg.stateless_reset_key().unwrap(),
            k1,
            "read back, not regenerated"
        );
        let bad = dir.path().join("short");
        std::fs::write(&bad, "abcd").unwrap();
        let cfg = Config {
            stateless_reset_key_file: Some(bad),
            ..cfg
        };
        let e = cfg.stateless_reset_key().unwrap_err();
        assert!(e.to_string().contains("stateless_reset_key_file"), "{e}");
    }
}
