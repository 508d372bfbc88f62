//! The administrator's E2EE policy (issue 6): who may make end-to-end encrypted calls.
//!
//! Owns the policy model (`model`, pure), its embedded store with the audit log (`store`),
//! the `duet-relay policy …` / `duet-relay user …` commands (`cli`), the admin HTTP API
//! (`admin_api`), and issuing: the E2EE claim for a user and join tokens that carry it
//! (`issue`). Does not own token format or verification (`duet_proto::token`), nor the
//! relay's enforcement of the claim at join (the relay's session code): policy is
//! evaluated where a token is minted, and relays stay stateless.

pub mod admin_api;
pub mod cli;
pub mod issue;
pub mod model;
pub mod store;

use duet_proto::{IdError, TokenError};

pub use admin_api::router;
pub use cli::{default_store_path, run_policy, run_user, PolicyCommand, UserCommand};
pub use issue::{claim_for, effective_for, mint_token, mint_token_at};
pub use model::{
    CallingE2ee, Change, Effective, GroupName, ModelError, PolicyName, PolicyState, PolicyView,
    Source, GLOBAL,
};
pub use store::{AuditRecord, PolicyStore, StoreError};

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
