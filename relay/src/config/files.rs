//! Small file helpers of the configuration: the data directory, files readable by their
//! owner only (keys, certificates), and the duration value parser of the command line.

use std::path::Path;
use std::time::Duration;

use super::ConfigError;

/// Creates the data directory if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
        what: "cannot create data directory",
        path: dir.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` readable by its owner only (where the platform allows).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    let io = |source| ConfigError::Io {
        what: "cannot write",
        path: path.to_owned(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, contents).map_err(io)
}

/// Parses a duration in the project's one grammar (see [`duet_proto::duration`]); kept
/// here as a clap value parser.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duet_proto::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
