//! duet-policy: the administrator's E2EE policy (who may make end-to-end encrypted calls)
//! and the issuing of join tokens that carry it. An app backend depends on this crate
//! alone; relays never read it, they enforce the claims of the tokens it mints.
//!
//! Module map (what each owns):
//! - `model`: names, the `calling-e2ee` setting (`disabled`, `disabled-user-override`,
//!   `required`), changes, the claim's precedence; the in-memory state (`policy.json`).
//! - `engine`: the rules over a store transaction, written once for every store.
//! - `store`: the [`Store`] trait; SQLite (embedded default) and PostgreSQL (feature
//!   `postgres`) behind it, the audit log as a table in the same transactions.
//! - `file_store`: the `policy.json` directory of earlier versions: import/export format.
//! - `tenant`: `policy apply -f tenant.toml`: declarative policies, grants and ranks.
//! - `placement`: the node set a token's placement is computed over (static list, DNS,
//!   Kubernetes EndpointSlices).
//! - `kubernetes` (feature `kubernetes`): list + watch of a Service's EndpointSlices.
//! - `issue`: minting a join token for a user: claim from the store, nodes from placement.
//! - `admin_api` (feature `admin-api`): the admin and token HTTP API.
//! - `cli` (feature `cli`): the `policy`/`user` command types the `duet-relay` binary embeds.
//!
//! Does not own the token format or verification (`duet_proto::token`), the placement
//! function (`duet_proto::placement`), nor the relay's enforcement of the claim at join.
//!
//! A backend minting tokens:
//! ```
//! use std::time::Duration;
//! use duet_policy::{Issuer, NodeSet, SqliteStore};
//! use duet_proto::{DeviceId, SessionId, SigningKey, UserId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("policy.db"))?;
//! let key = SigningKey::ed25519_from_seed("k1", &[7u8; 32])?;
//! let nodes = NodeSet::from_static(["relay-0", "relay-1", "relay-2"])?;
//! let issuer = Issuer::new(&store, &key, &nodes);
//! let minted = issuer.mint(
//!     SessionId::new("call-42")?,
//!     UserId::new("alice")?,
//!     DeviceId::new("phone")?,
//!     Duration::from_secs(600),
//! )?;
//! assert_eq!(minted.nodes.len(), 3); // primary + two fallbacks
//! println!("{} (claim {})", minted.token, minted.effective.claim);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "admin-api")]
pub mod admin_api;
#[cfg(feature = "cli")]
pub mod cli;
pub(crate) mod engine;
pub mod file_store;
pub mod issue;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod model;
pub mod placement;
pub mod store;
pub mod tenant;

use duet_proto::{IdError, TokenError};

#[cfg(feature = "admin-api")]
pub use admin_api::{router, ApiConfig};
pub use file_store::PolicyStore;
pub use issue::{Issuer, Minted};
pub use model::{
    CallingE2ee, Change, Effective, GroupName, ModelError, PolicyName, PolicyState, PolicyView,
    Source, UserRecord, GLOBAL,
};
pub use placement::{NodeSet, PlacementError};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
pub use store::{
    Actor, Applied, AuditQuery, AuditRecord, Credential, Role, SqliteStore, Store, StoreError,
};

/// Every error of the policy crate. Each has a stable [`code`](PolicyError::code).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Bad input, or a change the rules forbid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An id given for a token (session, device, node) is malformed.
    #[error("invalid {what}: {source}")]
    InvalidId {
        what: &'static str,
        #[source]
        source: IdError,
    },
    #[error("invalid token lifetime: {0}")]
    BadTtl(String),
    #[error("cannot mint a token: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("the system clock is before 1970")]
    Clock,
    /// A tenant file could not be read or is malformed.
    #[error("{0}")]
    Tenant(String),
    /// Printing a command's result failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

impl PolicyError {
    /// Stable machine-readable code (admin API error bodies, scripts).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Model(e) => e.code(),
            Self::Store(StoreError::Corrupt { .. }) => "store_corrupt",
            Self::Store(StoreError::ReadOnly { .. }) => "store_read_only",
            Self::Store(_) => "store_unavailable",
            Self::InvalidId { .. } => "invalid_id",
            Self::BadTtl(_) => "invalid_ttl",
            Self::Token(_) => "token_error",
            Self::Placement(_) => "placement_error",
            Self::Clock => "clock_error",
            Self::Tenant(_) => "invalid_tenant_file",
            Self::Output(_) => "output_error",
        }
    }
}
