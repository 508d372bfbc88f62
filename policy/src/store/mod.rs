//! Where the policy state lives: one [`Store`] trait, two databases behind it.
//!
//! - [`SqliteStore`] (default, embedded): one SQLite file in WAL mode in the data
//!   directory, no setup. Several processes may use it at once (writers wait on SQLite's
//!   lock). Opened read-only (read-only media, a snapshot) it still serves reads and mints.
//! - `PostgresStore` (feature `postgres`): for an issuer that runs replicated, several
//!   backend instances minting against one database.
//!
//! Both run the same rules (`engine`) over the same schema (`sql`), with the same
//! guarantees: every change is one transaction holding the write lock (so no lost update
//! between writers), its audit record is written in that transaction (so there is no
//! record of a change that did not commit, and no change without its record), and reads
//! are indexed: minting reads the user's row, their best group grant and one policy, never
//! the whole state. `policy.json` (the [`file_store`](crate::file_store)) is the
//! import/export format.
//!
//! Does not own the rules (`engine`, `model`) or who may call (`cli`, `admin_api`).

use std::path::{Path, PathBuf};

use duet_proto::UserId;
use serde::{Deserialize, Serialize};

use crate::model::{Change, Effective, PolicyName, PolicyState, PolicyView, UserRecord};
use crate::PolicyError;

#[cfg(feature = "postgres")]
mod postgres;
pub(crate) mod sql;
mod sqlite;

#[cfg(feature = "postgres")]
pub use self::postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The SQLite file's name inside a store directory.
pub const SQLITE_FILE: &str = "policy.db";

/// Errors of a store itself (refused changes are `ModelError`s).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "policy store {location} is corrupt ({detail}); it was left untouched: restore it \
         from a backup or fix it by hand"
    )]
    Corrupt { location: String, detail: String },
    #[error("cannot lock policy store {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the file store needs flock(2), which this operating system does not provide")]
    Unsupported,
    #[error("{backend} store: {detail}")]
    Database {
        backend: &'static str,
        detail: String,
    },
    #[error("policy store {location} is read-only: reads and minting work, changes do not")]
    ReadOnly { location: String },
    #[error("--store {0}")]
    Locator(String),
    #[error(
        "{} holds a policy.json from an older version but no database yet: run \
         `duet-relay policy import --from {}` once to migrate it",
        dir.display(),
        json.display()
    )]
    NeedsImport { dir: PathBuf, json: PathBuf },
}

/// Who makes a change: the person or program (`cli:<login>`, `api:<name>`) and the
/// credential it used (`local-cli` for the command line, an admin API credential's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub who: String,
    pub credential: String,
}

impl Actor {
    pub fn new(who: impl AsRef<str>, credential: impl AsRef<str>) -> Self {
        Self {
            who: clean(who.as_ref()),
            credential: clean(credential.as_ref()),
        }
    }
}

const MAX_ACTOR_LEN: usize = 128;

/// Actors come from environment variables and HTTP headers: keep them one short line.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ACTOR_LEN)
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The state's revision after this change (unique, increasing).
    pub revision: u64,
    /// UTC, RFC 3339 with milliseconds.
    pub when: String,
    pub unix_ms: u64,
    /// Who made the change: `cli:<login>` or `api:<name>`.
    pub actor: String,
    /// The credential used: `local-cli`, or an admin API credential's name.
    #[serde(default)]
    pub credential: String,
    /// Short name of the operation (`set_policy`, `grant_users`, `import`, ...).
    #[serde(default)]
    pub op: String,
    /// The change as JSON (a [`Change`], or an import/credential summary).
    pub operation: serde_json::Value,
    /// The touched part of the state before and after.
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// Which audit records to read. Newest first, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only changes that touched this user.
    pub user: Option<UserId>,
    /// Only changes at or after this instant (Unix ms).
    pub since_ms: Option<u64>,
    pub limit: usize,
}

/// What applying a change did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// False for a no-op (nothing written, nothing logged).
    pub changed: bool,
    /// The store's revision after the change.
    pub revision: u64,
    /// The touched part of the state afterwards (as in the audit record's `after`).
    pub after: serde_json::Value,
}

/// What an admin API credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Role {
    /// Every read: policies, users, effective policy, audit. No change, no token.
    ReadOnly,
    /// Everything: reads, changes, tokens.
    Admin,
    /// Only `POST /v1/tokens`: an app backend minting tokens.
    Issuer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::Admin => "admin",
            Self::Issuer => "issuer",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::ReadOnly, Self::Admin, Self::Issuer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A named admin API credential. Only the SHA-256 of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
}

/// The policy state, wherever it lives. Every method is one transaction.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `sqlite:<path>` or `postgres://host/db`, for messages (never a password).
    fn describe(&self) -> String;
    /// Applies one change and records it in the audit log, atomically.
    fn apply(&self, actor: &Actor, change: &Change) -> Result<Applied, PolicyError>;
    /// Applies every change in one transaction, each with its audit record: all or none.
    fn apply_all(&self, actor: &Actor, changes: &[Change]) -> Result<Vec<Applied>, PolicyError>;
    /// The policy that applies to `user` now (indexed: a few rows).
    fn effective(&self, user: &UserId) -> Result<Effective, PolicyError>;
    /// The stored record of a user, or the default one.
    fn user(&self, user: &UserId) -> Result<UserRecord, PolicyError>;
    fn view(&self, name: &PolicyName) -> Result<PolicyView, PolicyError>;
    fn list(&self) -> Result<Vec<PolicyView>, PolicyError>;
    fn revision(&self) -> Result<u64, PolicyError>;
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, PolicyError>;
    /// The whole state, in the `policy.json` format.
    fn export(&self) -> Result<PolicyState, PolicyError>;
    /// Replaces the whole state with `state` (validated first), as one audited change.
    fn import(&self, actor: &Actor, state: &PolicyState) -> Result<Applied, PolicyError>;
    /// Adds or replaces a credential; `secret_sha256` is the hex SHA-256 of its secret.
    fn put_credential(
        &self,
        actor: &Actor,
        cred: &Credential,
        secret_sha256: &str,
    ) -> Result<(), PolicyError>;
    /// Removes a credential; false if there was none of that name.
    fn remove_credential(&self, actor: &Actor, name: &str) -> Result<bool, PolicyError>;
    fn credentials(&self) -> Result<Vec<Credential>, PolicyError>;
    fn credential_by_secret(&self, secret_sha256: &str) -> Result<Option<Credential>, PolicyError>;
}

/// Opens the store a `--store` value names: `postgres://…` / `postgresql://…` is
/// PostgreSQL; anything else is a path: a directory holding `policy.db` (created if
/// missing), or a file ending in `.db`/`.sqlite`.
pub fn open(locator: &str) -> Result<Box<dyn Store>, PolicyError> {
    if locator.starts_with("postgres://") || locator.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            let (dsn, schema) = split_schema(locator);
            return Ok(Box::new(PostgresStore::open_in_schema(
                &dsn,
                schema.as_deref(),
            )?));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Locator(
            "names PostgreSQL, but this build has no `postgres` feature".into(),
        )
        .into());
    }
    if locator.is_empty() {
        return Err(StoreError::Locator("is empty".into()).into());
    }
    Ok(Box::new(SqliteStore::open(sqlite_path(Path::new(
        locator,
    )))?))
}

/// Takes a `schema=NAME` query parameter (ours, not libpq's) out of a PostgreSQL URL.
pub fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("schema=") {
            Some(s) => {
                schema = Some(s.to_owned());
                false
            }
            None => true,
        })
        .collect();
    let dsn = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (dsn, schema)
}

/// The PostgreSQL server the tests use (`DUET_TEST_POSTGRES`, set by
/// `.ci/postgres.sh`). Under CI (`CI` set) a missing DSN is a failure; locally the
/// PostgreSQL half of a test is skipped with a notice.
#[doc(hidden)]
pub fn test_postgres_dsn() -> Option<String> {
    match std::env::var("DUET_TEST_POSTGRES") {
        Ok(d) if !d.is_empty() => Some(d),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0") => {
            panic!("CI is set but DUET_TEST_POSTGRES is not: run `source .ci/postgres.sh` first")
        }
        _ => {
            eprintln!(
                "notice: DUET_TEST_POSTGRES unset: skipping the PostgreSQL run of this test \
                 (source .ci/postgres.sh to run it)"
            );
            None
        }
    }
}

/// The SQLite file a path names (a directory gets `policy.db` inside it).
pub fn sqlite_path(p: &Path) -> PathBuf {
    match p.extension().and_then(|e| e.to_str()) {
        Some("db" | "sqlite" | "sqlite3") => p.to_owned(),
        _ => p.join(SQLITE_FILE),
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Hex SHA-256 of an API secret (what the store keeps).
pub fn secret_sha256(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    duet_proto::hex::encode(d.as_ref())
}
