//! duet-policy: the administrator's E2EE policy (who may make end-to-end encrypted calls)
//! and the issuing of join tokens that carry it. An app backend depends on this crate
//! alone; relays never read it, they enforce the claims of the tokens it mints.
//!
//! Module map (what each owns):
//! - `model`: names, the `calling-e2ee` setting, changes, evaluation down to the claim. Pure.
//! - `file_store`: the JSON state file (`policy.json`), today the import/export format.
//! - `issue`: minting a join token for a user from the store.
//! - `admin_api` (feature `admin-api`): the admin HTTP API.
//! - `cli` (feature `cli`): the `policy`/`user` command types the `duet-relay` binary embeds.
//!
//! Does not own the token format or verification (`duet_proto::token`), nor the relay's
//! enforcement of the claim at join.

#[cfg(feature = "admin-api")]
pub mod admin_api;
#[cfg(feature = "cli")]
pub mod cli;
pub mod file_store;
pub mod issue;
pub mod model;

use duet_proto::{IdError, TokenError};

#[cfg(feature = "admin-api")]
pub use admin_api::router;
#[cfg(feature = "cli")]
pub use cli::{default_store_path, run_policy, run_user, PolicyCommand, UserCommand};
pub use file_store::{AuditRecord, PolicyStore, StoreError};
pub use issue::{claim_for, effective_for, mint_token, mint_token_at};
pub use model::{
    CallingE2ee, Change, Effective, GroupName, ModelError, PolicyName, PolicyState, PolicyView,
    Source, GLOBAL,
};

/// Every error of the policy module. Each has a stable [`code`](PolicyError::code).
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
    #[error("the system clock is before 1970")]
    Clock,
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
            Self::Store(_) => "store_unavailable",
            Self::InvalidId { .. } => "invalid_id",
            Self::BadTtl(_) => "invalid_ttl",
            Self::Token(_) => "token_error",
            Self::Clock => "clock_error",
            Self::Output(_) => "output_error",
        }
    }
}
