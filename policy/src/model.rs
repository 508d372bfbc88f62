//! The administrator's E2EE policy model: pure data and rules, no I/O.
//!
//! Owns: policy and group names and their syntax, the `calling-e2ee` setting, the state
//! (policies, direct user assignments, group grants with ranks, each user's own E2EE
//! switch, compliance recording and group memberships), every change an administrator can
//! make ([`Change`], applied by [`PolicyState::apply`]) and the evaluation of the policy
//! that applies to a user ([`PolicyState::effective`]) down to the token claim.
//!
//! Does not own: where the state lives or how concurrent writers are serialised
//! (`store`), the command line (`cli`), HTTP (`admin_api`), or token signing (`issue` and
//! `duet_proto::token`). Users and groups are not a directory: any well-formed user id is
//! a user, and one with no record has the defaults (no direct policy, switch off, no
//! compliance recording, no groups) — the app's directory owns who exists.
//!
//! The rules mirror the enterprise calling products' model:
//! - `Global` always exists, applies to everyone not assigned another policy, and can be
//!   neither removed nor unassigned. Out of the box it is `disabled`.
//! - One policy per user at a time. Granting a user a policy replaces the previous one;
//!   granting "none" (or `Global`, which means the same) returns the user to inheritance.
//! - Resolution: the user's direct assignment wins; else among the groups the user is in
//!   that have a grant, the lowest rank wins; else `Global`. Ranks are unique across group
//!   grants so the order is never ambiguous.
//! - The claim: compliance recording beats everything, then a `disabled` setting, then the
//!   user's own switch.
//!
//! Size: ~1,100 lines, a third of them unit tests; the model and its evaluation rules are one
//! concept and are reviewed together.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use duet_proto::{E2eeClaim, IdError, UserId};
use serde::{Deserialize, Deserializer, Serialize};

use crate::engine;

/// The name of the policy every user has unless assigned another.
pub const GLOBAL: &str = "Global";

/// Longest policy or group name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Most groups one user may be in: memberships come from a directory sync, and a bound
/// keeps one user's evaluation (and one bad sync) from growing without limit.
pub const MAX_GROUPS_PER_USER: usize = 1000;

/// Most users one batch change (`GrantUsers`, `SetGroupMembers`) may name.
pub const MAX_BATCH_USERS: usize = 1_000_000;

/// Version of the serialized state; bumped only on an incompatible change.
pub const STATE_FORMAT: u32 = 1;

/// Errors of the model: bad input or a change the rules forbid. Each is a client error
/// (nothing about the store), so the CLI and the API can report it as such.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{kind} name is empty")]
    NameEmpty { kind: &'static str },
    #[error(
        "{kind} name {name:?} contains whitespace: {kind} names are single tokens, no spaces \
         (for example {suggestion:?})"
    )]
    NameHasWhitespace {
        kind: &'static str,
        name: String,
        suggestion: String,
    },
    #[error(
        "{kind} name {name:?} contains {ch:?}; allowed are ASCII letters, digits and . _ - : @"
    )]
    NameBadChar {
        kind: &'static str,
        name: String,
        ch: char,
    },
    #[error("{kind} name is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    NameTooLong { kind: &'static str, len: usize },
    #[error("policy name {0:?} is reserved: the global policy is spelled \"Global\"")]
    NameReserved(String),
    #[error("invalid user: {0}")]
    InvalidUser(IdError),
    #[error("no policy named {0:?} (see `duet-relay policy list`)")]
    UnknownPolicy(String),
    #[error("the Global policy cannot be removed or unassigned; set its calling-e2ee instead")]
    GlobalIsPermanent,
    #[error(
        "policy {name:?} is still assigned to {}; grant them another policy first, or remove \
         it with --unassign to return them to Global",
        holders_text(users, groups)
    )]
    PolicyInUse {
        name: String,
        users: Vec<String>,
        groups: Vec<String>,
    },
    #[error("rank {rank} is already held by group {group:?}; ranks are unique, pick another")]
    RankTaken { rank: u32, group: String },
    #[error("rank must be 1 or more (1 is the highest priority)")]
    RankZero,
    #[error("a group grant needs --rank (1 is the highest priority)")]
    RankRequired,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("import: the state is invalid: {0}")]
    InvalidImport(String),
    #[error(
        "groups: user {user:?} would be in {count} groups; at most {MAX_GROUPS_PER_USER} are \
         allowed"
    )]
    TooManyGroups { user: String, count: usize },
    #[error("{field}: {count} users in one change; at most {MAX_BATCH_USERS} are allowed")]
    BatchTooLarge { field: &'static str, count: usize },
}

fn holders_text(users: &[String], groups: &[String]) -> String {
    // Name the holders, but keep the message readable when thousands hold the policy.
    const SHOWN: usize = 10;
    fn part(kind: &str, v: &[String]) -> Option<String> {
        if v.is_empty() {
            return None;
        }
        let mut s = format!(
            "{} {kind}{} (",
            v.len(),
            if v.len() == 1 { "" } else { "s" }
        );
        s.push_str(&v.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "));
        if v.len() > SHOWN {
            s.push_str(&format!(", and {} more", v.len() - SHOWN));
        }
        s.push(')');
        Some(s)
    }
    [part("user", users), part("group", groups)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
}

impl ModelError {
    /// Stable machine-readable code (admin API error bodies, scripts).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NameEmpty { .. }
            | Self::NameHasWhitespace { .. }
            | Self::NameBadChar { .. }
            | Self::NameTooLong { .. }
            | Self::NameReserved(_) => "invalid_name",
            Self::InvalidUser(_) => "invalid_user",
            Self::UnknownPolicy(_) => "unknown_policy",
            Self::GlobalIsPermanent => "global_is_permanent",
            Self::PolicyInUse { .. } => "policy_in_use",
            Self::RankTaken { .. } => "rank_taken",
            Self::RankZero | Self::RankRequired => "invalid_rank",
            Self::TooManyGroups { .. } => "too_many_groups",
            Self::Internal(_) => "internal",
            Self::InvalidImport(_) => "invalid_import",
            Self::BatchTooLarge { .. } => "batch_too_large",
        }
    }
}

fn validate_name(kind: &'static str, s: &str) -> Result<(), ModelError> {
    if s.is_empty() {
        return Err(ModelError::NameEmpty { kind });
    }
    if s.chars().any(char::is_whitespace) {
        let suggestion = s.split_whitespace().collect::<Vec<_>>().join("-");
        return Err(ModelError::NameHasWhitespace {
            kind,
            name: s.to_owned(),
            suggestion,
        });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(ModelError::NameTooLong { kind, len: s.len() });
    }
    // The same charset as protocol ids: names end up in URLs, logs and shell scripts.
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')))
    {
        return Err(ModelError::NameBadChar {
            kind,
            name: s.to_owned(),
            ch,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, ModelError> {
                let s = s.into();
                validate_name($kind, &s)?;
                let check: fn(&str) -> Result<(), ModelError> = $check;
                check(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, ModelError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        // Validating on deserialize keeps the invariant for names read from the store
        // file or an API body.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A policy's name: a single token. `Global` is the global policy; any other spelling
    /// of "global" is refused so nobody creates a look-alike.
    PolicyName,
    "policy",
    |s| {
        if s != GLOBAL && s.eq_ignore_ascii_case(GLOBAL) {
            Err(ModelError::NameReserved(s.to_owned()))
        } else {
            Ok(())
        }
    }
);
name_type!(
    /// A user group's name (as the app's directory calls it): a single token.
    GroupName,
    "group",
    |_| Ok(())
);

impl PolicyName {
    pub fn global() -> Self {
        Self(GLOBAL.to_owned())
    }
    pub fn is_global(&self) -> bool {
        self.0 == GLOBAL
    }
}

/// Parses a user id, mapping its error into the model's.
pub fn user_id(s: &str) -> Result<UserId, ModelError> {
    UserId::new(s).map_err(ModelError::InvalidUser)
}

/// The `calling-e2ee` setting of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum CallingE2ee {
    /// Nobody under this policy can turn E2EE on.
    Disabled,
    /// Off by default; each user may turn it on for themselves.
    DisabledUserOverride,
    /// Every call of a user under this policy is end-to-end encrypted or does not happen:
    /// tokens say `required`, the relay refuses their plain joins, and no SDK falls back.
    Required,
}

impl CallingE2ee {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::DisabledUserOverride => "disabled-user-override",
            Self::Required => "required",
        }
    }
}

impl fmt::Display for CallingE2ee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store keeps about one user. A user with the default record is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserRecord {
    /// Direct assignment; `None` means inherit (groups, then Global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyName>,
    /// The user's own "end-to-end encrypted calls" switch. Per user, not per device, so it
    /// is the same on all their devices.
    #[serde(default)]
    pub e2ee: bool,
    /// Calls of this user are recorded for compliance: never E2EE, whatever the policy.
    #[serde(default)]
    pub compliance_recording: bool,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub groups: BTreeSet<GroupName>,
}

impl UserRecord {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A policy granted to a group, with its rank (lower wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupGrant {
    pub policy: PolicyName,
    pub rank: u32,
}

/// Where a user's effective policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The user was granted the policy directly.
    Direct,
    /// Inherited from a group the user is in: the lowest-ranked group with a grant.
    Group { group: GroupName, rank: u32 },
    /// No direct assignment and no granted group: the Global policy.
    GlobalDefault,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct => f.write_str("direct assignment"),
            Self::Group { group, rank } => write!(f, "group {group} (rank {rank})"),
            Self::GlobalDefault => f.write_str("global default"),
        }
    }
}

/// The policy that applies to a user, why, and the E2EE claim a token for them carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    pub user: UserId,
    pub policy: PolicyName,
    pub source: Source,
    pub setting: CallingE2ee,
    pub user_switch: bool,
    pub compliance_recording: bool,
    pub claim: E2eeClaim,
}

impl Effective {
    /// One line on why the claim is what it is, for the CLI.
    pub fn reason(&self) -> &'static str {
        match self.claim {
            E2eeClaim::ComplianceRecording => {
                "the user is under compliance recording, which no policy overrides"
            }
            E2eeClaim::PolicyDisabled => "the policy's calling-e2ee is disabled",
            E2eeClaim::UserNotEnabled => {
                "the policy lets the user turn E2EE on, but their switch is off"
            }
            E2eeClaim::Allowed => "the policy lets the user turn E2EE on, and their switch is on",
            E2eeClaim::Required => "the policy requires end-to-end encryption",
            E2eeClaim::Unknown => "no decision could be made",
        }
    }
}

/// The claim from its inputs; the single place the precedence lives.
pub fn claim(setting: CallingE2ee, user_switch: bool, compliance_recording: bool) -> E2eeClaim {
    if compliance_recording {
        E2eeClaim::ComplianceRecording
    } else if setting == CallingE2ee::Disabled {
        E2eeClaim::PolicyDisabled
    } else if setting == CallingE2ee::Required {
        // Not the user's choice: the switch does not matter.
        E2eeClaim::Required
    } else if !user_switch {
        E2eeClaim::UserNotEnabled
    } else {
        E2eeClaim::Allowed
    }
}

/// One administrator change. Serialized as the audit log's `operation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Creates the policy if new.
    SetPolicy {
        name: PolicyName,
        calling_e2ee: CallingE2ee,
    },
    /// Refused while the policy is assigned, unless `unassign`: then its users return to
    /// inheritance and its group grants are dropped.
    RemovePolicy {
        name: PolicyName,
        unassign: bool,
    },
    /// `policy: None` (or Global) returns the user to inheritance.
    GrantUser {
        user: UserId,
        policy: Option<PolicyName>,
    },
    /// `policy: None` drops the group's grant; otherwise `rank` is required.
    GrantGroup {
        group: GroupName,
        policy: Option<PolicyName>,
        rank: Option<u32>,
    },
    SetUserE2ee {
        user: UserId,
        on: bool,
    },
    SetComplianceRecording {
        user: UserId,
        on: bool,
    },
    /// Replaces the user's group memberships.
    SetUserGroups {
        user: UserId,
        groups: BTreeSet<GroupName>,
    },
    /// Batch assignment: grants every listed user `policy` (`None`/Global: inheritance),
    /// in one transaction and one audit record.
    GrantUsers {
        users: Vec<UserId>,
        policy: Option<PolicyName>,
    },
    /// Group membership sync from a directory: afterwards exactly `users` are members of
    /// `group` (others leave it, the listed ones join).
    SetGroupMembers {
        group: GroupName,
        users: Vec<UserId>,
    },
}

impl Change {
    /// Short name, as in the audit log's `operation.op`.
    pub fn op(&self) -> &'static str {
        match self {
            Self::SetPolicy { .. } => "set_policy",
            Self::RemovePolicy { .. } => "remove_policy",
            Self::GrantUser { .. } => "grant_user",
            Self::GrantGroup { .. } => "grant_group",
            Self::SetUserE2ee { .. } => "set_user_e2ee",
            Self::SetComplianceRecording { .. } => "set_compliance_recording",
            Self::SetUserGroups { .. } => "set_user_groups",
            Self::GrantUsers { .. } => "grant_users",
            Self::SetGroupMembers { .. } => "set_group_members",
        }
    }
}

/// A group grant as listed under its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupGrantView {
    pub group: GroupName,
    pub rank: u32,
}

/// A policy with who holds it, for `list` and `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub name: PolicyName,
    pub calling_e2ee: CallingE2ee,
    /// True for `Global`, which also applies to every user not listed anywhere.
    pub global: bool,
    /// Users assigned this policy directly.
    pub users: Vec<UserId>,
    /// Groups granted this policy, by rank.
    pub groups: Vec<GroupGrantView>,
}

/// The whole administrator state. Invariants (checked by [`PolicyState::validate`] when
/// read back): `Global` exists; every assignment names an existing policy; ranks are
/// unique and non-zero; no user record is the default one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub format: u32,
    /// Bumped by every change that changed something; the audit log's entries carry it.
    pub revision: u64,
    policies: BTreeMap<PolicyName, CallingE2ee>,
    #[serde(default)]
    users: BTreeMap<UserId, UserRecord>,
    #[serde(default)]
    groups: BTreeMap<GroupName, GroupGrant>,
}

impl Default for PolicyState {
    /// Out of the box: only Global, set to `disabled`.
    fn default() -> Self {
        Self {
            format: STATE_FORMAT,
            revision: 0,
            policies: BTreeMap::from([(PolicyName::global(), CallingE2ee::Disabled)]),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }
}

impl PolicyState {
    /// Checks the invariants of a state read from outside (file, test fixture).
    pub fn validate(&self) -> Result<(), String> {
        if self.format != STATE_FORMAT {
            return Err(format!(
                "state format {} is not the supported {STATE_FORMAT}",
                self.format
            ));
        }
        if !self.policies.contains_key(&PolicyName::global()) {
            return Err("the Global policy is missing".into());
        }
        for (user, rec) in &self.users {
            if let Some(p) = &rec.policy {
                if !self.policies.contains_key(p) {
                    return Err(format!("user {user} is assigned unknown policy {p}"));
                }
                if p.is_global() {
                    return Err(format!("user {user} is assigned Global directly"));
                }
            }
        }
        let mut ranks = BTreeMap::new();
        for (group, grant) in &self.groups {
            if !self.policies.contains_key(&grant.policy) {
                return Err(format!(
                    "group {group} is granted unknown policy {}",
                    grant.policy
                ));
            }
            if grant.rank == 0 {
                return Err(format!("group {group} has rank 0"));
            }
            if let Some(other) = ranks.insert(grant.rank, group) {
                return Err(format!(
                    "groups {other} and {group} share rank {}",
                    grant.rank
                ));
            }
        }
        Ok(())
    }

    /// The setting of a policy.
    pub fn policy(&self, name: &PolicyName) -> Result<CallingE2ee, ModelError> {
        self.policies
            .get(name)
            .copied()
            .ok_or_else(|| ModelError::UnknownPolicy(name.to_string()))
    }

    /// The stored record of a user, or the default one.
    pub fn user(&self, user: &UserId) -> UserRecord {
        self.users.get(user).cloned().unwrap_or_default()
    }

    /// Users with a stored (non-default) record.
    pub fn users(&self) -> impl Iterator<Item = (&UserId, &UserRecord)> {
        self.users.iter()
    }

    /// Group grants, by group name.
    pub fn group_grants(&self) -> impl Iterator<Item = (&GroupName, &GroupGrant)> {
        self.groups.iter()
    }

    /// A policy and who holds it.
    pub fn view(&self, name: &PolicyName) -> Result<PolicyView, ModelError> {
        let mut s = Cow::Borrowed(self);
        engine::view(&mut s, name).map_err(model_only)
    }

    /// Every policy, Global first, then by name.
    pub fn list(&self) -> Vec<PolicyView> {
        let mut s = Cow::Borrowed(self);
        engine::list(&mut s).unwrap_or_default()
    }

    /// The policy that applies to `user`, why, and the resulting claim.
    pub fn effective(&self, user: &UserId) -> Effective {
        let mut s = Cow::Borrowed(self);
        // The in-memory transaction never fails.
        match engine::effective(&mut s, user) {
            Ok(e) => e,
            Err(_) => Effective {
                user: user.clone(),
                policy: PolicyName::global(),
                source: Source::GlobalDefault,
                setting: CallingE2ee::Disabled,
                user_switch: false,
                compliance_recording: false,
                claim: E2eeClaim::PolicyDisabled,
            },
        }
    }

    /// Applies one change. Returns whether anything changed (a no-op neither bumps the
    /// revision nor is written). On error the state is untouched.
    pub fn apply(&mut self, change: &Change) -> Result<bool, ModelError> {
        self.apply_outcome(change).map(|o| o.is_some())
    }

    pub(crate) fn apply_outcome(
        &mut self,
        change: &Change,
    ) -> Result<Option<engine::Outcome>, ModelError> {
        // The rules run on a copy-on-write view, so a change refused half-way leaves
        // `self` as it was.
        let mut next = Cow::Borrowed(&*self);
        let out = engine::apply(&mut next, change).map_err(model_only)?;
        if out.is_some() {
            let next = next.into_owned();
            *self = next;
        }
        Ok(out)
    }

    /// The part of the state a change touches, for the audit log's before/after: the
    /// policy with its holders, the group's grant, or the user's record with the claim it
    /// yields (so the log shows a change of what tokens will say).
    pub fn subject(&self, change: &Change) -> serde_json::Value {
        let mut s = Cow::Borrowed(self);
        engine::subject(&mut s, change).unwrap_or_default()
    }
}

/// The in-memory state's transaction is infallible; its only errors are the rules'.
fn model_only(e: crate::PolicyError) -> ModelError {
    match e {
        crate::PolicyError::Model(m) => m,
        // Unreachable for PolicyState (its Tx never fails); map to something safe.
        other => ModelError::Internal(other.to_string()),
    }
}

type TxR<T> = Result<T, crate::store::StoreError>;

// Reads borrow the state; the first write of a change clones it (so a refused change
// leaves the original as it was).
impl engine::Tx for Cow<'_, PolicyState> {
    fn revision(&mut self) -> TxR<u64> {
        Ok(self.revision)
    }
    fn set_revision(&mut self, rev: u64) -> TxR<()> {
        self.to_mut().revision = rev;
        Ok(())
    }
    fn policy(&mut self, name: &PolicyName) -> TxR<Option<CallingE2ee>> {
        Ok(self.policies.get(name).copied())
    }
    fn policies(&mut self) -> TxR<Vec<(PolicyName, CallingE2ee)>> {
        Ok(self.policies.iter().map(|(n, c)| (n.clone(), *c)).collect())
    }
    fn put_policy(&mut self, name: &PolicyName, setting: CallingE2ee) -> TxR<()> {
        self.to_mut().policies.insert(name.clone(), setting);
        Ok(())
    }
    fn delete_policy(&mut self, name: &PolicyName) -> TxR<()> {
        self.to_mut().policies.remove(name);
        Ok(())
    }
    fn policy_users(&mut self, name: &PolicyName) -> TxR<Vec<UserId>> {
        Ok(self
            .users
            .iter()
            .filter(|(_, r)| r.policy.as_ref() == Some(name))
            .map(|(u, _)| u.clone())
            .collect())
    }
    fn policy_grants(&mut self, name: &PolicyName) -> TxR<Vec<GroupGrantView>> {
        Ok(self
            .groups
            .iter()
            .filter(|(_, g)| &g.policy == name)
            .map(|(group, g)| GroupGrantView {
                group: group.clone(),
                rank: g.rank,
            })
            .collect())
    }
    fn user(&mut self, user: &UserId) -> TxR<Option<UserRecord>> {
        Ok(self.users.get(user).cloned())
    }
    fn put_user(&mut self, user: &UserId, _old: Option<&UserRecord>, rec: &UserRecord) -> TxR<()> {
        self.to_mut().users.insert(user.clone(), rec.clone());
        Ok(())
    }
    fn delete_user(&mut self, user: &UserId) -> TxR<()> {
        self.to_mut().users.remove(user);
        Ok(())
    }
    fn grant(&mut self, group: &GroupName) -> TxR<Option<GroupGrant>> {
        Ok(self.groups.get(group).cloned())
    }
    fn group_with_rank(&mut self, rank: u32) -> TxR<Option<GroupName>> {
        Ok(self
            .groups
            .iter()
            .find(|(_, g)| g.rank == rank)
            .map(|(n, _)| n.clone()))
    }
    fn put_grant(&mut self, group: &GroupName, grant: &GroupGrant) -> TxR<()> {
        self.to_mut().groups.insert(group.clone(), grant.clone());
        Ok(())
    }
    fn delete_grant(&mut self, group: &GroupName) -> TxR<()> {
        self.to_mut().groups.remove(group);
        Ok(())
    }
    fn group_members(&mut self, group: &GroupName) -> TxR<Vec<UserId>> {
        Ok(self
            .users
            .iter()
            .filter(|(_, r)| r.groups.contains(group))
            .map(|(u, _)| u.clone())
            .collect())
    }
    fn best_grant(
        &mut self,
        _user: &UserId,
        rec: &UserRecord,
    ) -> TxR<Option<(GroupName, GroupGrant)>> {
        Ok(rec
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g).map(|grant| (g.clone(), grant.clone())))
            .min_by_key(|(_, grant)| grant.rank))
    }
}

impl PolicyState {
    /// Builds a state from its parts (import, tests); [`PolicyState::validate`] checks it.
    pub fn from_parts(
        revision: u64,
        policies: BTreeMap<PolicyName, CallingE2ee>,
        users: BTreeMap<UserId, UserRecord>,
        groups: BTreeMap<GroupName, GroupGrant>,
    ) -> Self {
        Self {
            format: STATE_FORMAT,
            revision,
            policies,
            users,
            groups,
        }
    }

    /// Policies and their settings.
    pub fn policies(&self) -> impl Iterator<Item = (&PolicyName, &CallingE2ee)> {
        self.policies.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }
    fn p(s: &str) -> PolicyName {
        PolicyName::new(s).unwrap()
    }
    fn g(s: &str) -> GroupName {
        GroupName::new(s).unwrap()
    }
    fn set(name: &str, c: CallingE2ee) -> Change {
        Change::SetPolicy {
            name: p(name),
            calling_e2ee: c,
        }
    }
    fn grant(user: &str, policy: Option<&str>) -> Change {
        Change::GrantUser {
            user: u(user),
            policy: policy.map(p),
        }
    }
    fn switch(user: &str, on: bool) -> Change {
        Change::SetUserE2ee { user: u(user), on }
    }
    fn groups(user: &str, gs: &[&str]) -> Change {
        Change::SetUserGroups {
            user: u(user),
            groups: gs.iter().map(|s| g(s)).collect(),
        }
    }
    fn grant_group(group: &str, policy: &str, rank: u32) -> Change {
        Change::GrantGroup {
            group: g(group),
            policy: Some(p(policy)),
            rank: Some(rank),
        }
    }
    use CallingE2ee::{Disabled, DisabledUserOverride as Override};

    #[test]
    fn out_of_the_box_global_is_disabled_for_everyone() {
        let s = PolicyState::default();
        assert_eq!(s.validate(), Ok(()));
        let views = s.list();
        assert_eq!(views.len(), 1);
        assert!(views[0].global);
        assert_eq!(views[0].calling_e2ee, Disabled);
        let e = s.effective(&u("alice"));
        assert_eq!(e.policy, PolicyName::global());
        assert_eq!(e.source, Source::GlobalDefault);
        assert_eq!(e.claim, E2eeClaim::PolicyDisabled);
        // Turning the switch on changes nothing while the policy says disabled.
        let mut s = s;
        s.apply(&switch("alice", true)).unwrap();
        assert_eq!(s.effective(&u("alice")).claim, E2eeClaim::PolicyDisabled);
    }

    #[test]
    fn enabling_for_the_whole_tenant_still_needs_each_users_switch() {
        let mut s = PolicyState::default();
        assert!(s.apply(&set(GLOBAL, Override)).unwrap());
        assert_eq!(s.effective(&u("alice")).claim, E2eeClaim::UserNotEnabled);
        s.apply(&switch("alice", true)).unwrap();
        assert_eq!(s.effective(&u("alice")).claim, E2eeClaim::Allowed);
        assert_eq!(s.effective(&u("bob")).claim, E2eeClaim::UserNotEnabled);
        s.apply(&switch("alice", false)).unwrap();
        assert_eq!(s.effective(&u("alice")).claim, E2eeClaim::UserNotEnabled);
    }

    #[test]
    fn a_named_policy_granted_to_one_user_then_unassigned() {
        let mut s = PolicyState::default();
        s.apply(&set("E2EE-Pilot", Override)).unwrap();
        s.apply(&grant("alice", Some("E2EE-Pilot"))).unwrap();
        s.apply(&switch("alice", true)).unwrap();
        s.apply(&switch("bob", true)).unwrap();
        let a = s.effective(&u("alice"));
        assert_eq!(
            (a.policy.as_str(), &a.source),
            ("E2EE-Pilot", &Source::Direct)
        );
        assert_eq!(a.claim, E2eeClaim::Allowed);
        assert_eq!(s.effective(&u("bob")).claim, E2eeClaim::PolicyDisabled);
        assert_eq!(s.view(&p("E2EE-Pilot")).unwrap().users, vec![u("alice")]);

        // One policy at a time: a second grant replaces the first.
        s.apply(&set("Other", Disabled)).unwrap();
        s.apply(&grant("alice", Some("Other"))).unwrap();
        assert_eq!(s.effective(&u("alice")).policy, p("Other"));
        assert!(s.view(&p("E2EE-Pilot")).unwrap().users.is_empty());

        // Unassigning returns the user to Global; so does granting Global.
        s.apply(&grant("alice", None)).unwrap();
        let a = s.effective(&u("alice"));
        assert_eq!(
            (a.policy, a.source),
            (PolicyName::global(), Source::GlobalDefault)
        );
        s.apply(&grant("alice", Some("Other"))).unwrap();
        s.apply(&grant("alice", Some(GLOBAL))).unwrap();
        assert_eq!(s.user(&u("alice")).policy, None);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn group_ranks_lowest_wins_and_direct_beats_groups() {
        let mut s = PolicyState::default();
        s.apply(&set("Open", Override)).unwrap();
        s.apply(&set("Closed", Disabled)).unwrap();
        s.apply(&grant_group("sales", "Closed", 2)).unwrap();
        s.apply(&grant_group("eng", "Open", 1)).unwrap();
        s.apply(&groups("carol", &["sales", "eng"])).unwrap();
        s.apply(&switch("carol", true)).unwrap();
        let e = s.effective(&u("carol"));
        assert_eq!(e.policy, p("Open"));
        assert_eq!(
            e.source,
            Source::Group {
                group: g("eng"),
                rank: 1
            }
        );
        assert_eq!(e.claim, E2eeClaim::Allowed);

        // Re-rank: sales moves to 1 once eng leaves it.
        assert_eq!(
            s.apply(&grant_group("sales", "Closed", 1)),
            Err(ModelError::RankTaken {
                rank: 1,
                group: "eng".into()
            })
        );
        s.apply(&grant_group("eng", "Open", 3)).unwrap();
        s.apply(&grant_group("sales", "Closed", 1)).unwrap();
        assert_eq!(s.effective(&u("carol")).claim, E2eeClaim::PolicyDisabled);

        // Direct assignment wins over any group.
        s.apply(&grant("carol", Some("Open"))).unwrap();
        assert_eq!(s.effective(&u("carol")).source, Source::Direct);
        assert_eq!(s.effective(&u("carol")).claim, E2eeClaim::Allowed);
        // Unassigning returns to the groups, not straight to Global.
        s.apply(&grant("carol", None)).unwrap();
        assert_eq!(s.effective(&u("carol")).policy, p("Closed"));
        // A group without a grant does not count; leaving all groups means Global.
        s.apply(&groups("carol", &["nobody-granted"])).unwrap();
        assert_eq!(s.effective(&u("carol")).source, Source::GlobalDefault);

        assert_eq!(
            s.apply(&Change::GrantGroup {
                group: g("x"),
                policy: Some(p("Open")),
                rank: None
            }),
            Err(ModelError::RankRequired)
        );
        assert_eq!(
            s.apply(&grant_group("x", "Open", 0)),
            Err(ModelError::RankZero)
        );
        // Dropping a group's grant.
        s.apply(&Change::GrantGroup {
            group: g("sales"),
            policy: None,
            rank: None,
        })
        .unwrap();
        assert!(s.view(&p("Closed")).unwrap().groups.is_empty());
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn compliance_recording_beats_everything() {
        let mut s = PolicyState::default();
        s.apply(&set(GLOBAL, Override)).unwrap();
        s.apply(&set("Open", Override)).unwrap();
        s.apply(&grant("dave", Some("Open"))).unwrap();
        s.apply(&switch("dave", true)).unwrap();
        assert_eq!(s.effective(&u("dave")).claim, E2eeClaim::Allowed);
        s.apply(&Change::SetComplianceRecording {
            user: u("dave"),
            on: true,
        })
        .unwrap();
        let e = s.effective(&u("dave"));
        assert_eq!(e.claim, E2eeClaim::ComplianceRecording);
        assert!(e.compliance_recording && e.user_switch);
        // Also over a disabled policy and an off switch.
        assert_eq!(claim(Disabled, false, true), E2eeClaim::ComplianceRecording);
        assert_eq!(claim(Disabled, true, false), E2eeClaim::PolicyDisabled);
        assert_eq!(claim(Override, false, false), E2eeClaim::UserNotEnabled);
        assert_eq!(claim(Override, true, false), E2eeClaim::Allowed);
    }

    #[test]
    fn the_switch_is_per_user_so_every_device_gets_the_same_claim() {
        // Nothing in the state or in `effective` takes a device: the claim for a user's
        // phone and laptop is the same value by construction. Check it stays so through
        // changes.
        let mut s = PolicyState::default();
        s.apply(&set(GLOBAL, Override)).unwrap();
        s.apply(&switch("erin", true)).unwrap();
        let phone = s.effective(&u("erin"));
        let laptop = s.effective(&u("erin"));
        assert_eq!(phone, laptop);
        assert_eq!(phone.claim, E2eeClaim::Allowed);
    }

    #[test]
    fn global_is_permanent_and_policies_in_use_are_not_removed_silently() {
        let mut s = PolicyState::default();
        assert_eq!(
            s.apply(&Change::RemovePolicy {
                name: PolicyName::global(),
                unassign: true
            }),
            Err(ModelError::GlobalIsPermanent)
        );
        s.apply(&set("Pilot", Override)).unwrap();
        s.apply(&grant("alice", Some("Pilot"))).unwrap();
        s.apply(&grant_group("eng", "Pilot", 5)).unwrap();
        let rev = s.revision;
        let err = s
            .apply(&Change::RemovePolicy {
                name: p("Pilot"),
                unassign: false,
            })
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("1 user (alice)") && msg.contains("1 group (eng)"),
            "{msg}"
        );
        assert!(msg.contains("--unassign"), "{msg}");
        assert_eq!(s.revision, rev, "a refused change changes nothing");
        assert!(s
            .apply(&Change::RemovePolicy {
                name: p("Pilot"),
                unassign: true
            })
            .unwrap());
        assert_eq!(s.effective(&u("alice")).source, Source::GlobalDefault);
        assert_eq!(s.group_grants().count(), 0);
        assert_eq!(
            s.apply(&Change::RemovePolicy {
                name: p("Pilot"),
                unassign: false
            }),
            Err(ModelError::UnknownPolicy("Pilot".into()))
        );
        assert_eq!(
            s.apply(&grant("alice", Some("Pilot"))),
            Err(ModelError::UnknownPolicy("Pilot".into()))
        );
        // The user record went back to default and is no longer stored.
        assert_eq!(s.users().count(), 0);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn names_are_single_tokens() {
        let e = PolicyName::new("E2EE Pilot").unwrap_err();
        assert!(matches!(e, ModelError::NameHasWhitespace { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("single tokens") && msg.contains("no spaces"),
            "{msg}"
        );
        assert!(msg.contains("E2EE-Pilot"), "suggests a fix: {msg}");
        assert!(matches!(
            PolicyName::new(""),
            Err(ModelError::NameEmpty { kind: "policy" })
        ));
        assert!(matches!(
            PolicyName::new("a/b"),
            Err(ModelError::NameBadChar { ch: '/', .. })
        ));
        assert!(matches!(
            GroupName::new("x".repeat(MAX_NAME_LEN + 1)),
            Err(ModelError::NameTooLong { .. })
        ));
        assert_eq!(
            PolicyName::new("global"),
            Err(ModelError::NameReserved("global".into()))
        );
        assert!(PolicyName::new(GLOBAL).unwrap().is_global());
        assert!(user_id("a b").is_err());
        // Deserializing validates too.
        assert!(serde_json::from_str::<PolicyName>("\"a b\"").is_err());
    }

    #[test]
    fn no_op_changes_do_not_bump_the_revision() {
        let mut s = PolicyState::default();
        assert!(!s.apply(&set(GLOBAL, Disabled)).unwrap());
        assert!(!s.apply(&grant("alice", None)).unwrap());
        assert_eq!(s.revision, 0);
        assert!(s.apply(&switch("alice", true)).unwrap());
        assert_eq!(s.revision, 1);
    }

    #[test]
    fn state_roundtrips_and_validation_catches_broken_files() {
        let mut s = PolicyState::default();
        s.apply(&set("Open", Override)).unwrap();
        s.apply(&grant("alice", Some("Open"))).unwrap();
        s.apply(&grant_group("eng", "Open", 1)).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: PolicyState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let broken = json.replace("\"Open\":\"disabled-user-override\"", "");
        let broken = broken.replace(",}", "}");
        if let Ok(b) = serde_json::from_str::<PolicyState>(&broken) {
            assert!(b.validate().is_err());
        }
        let mut b = s.clone();
        b.policies.remove(&PolicyName::global());
        assert!(b.validate().is_err());
    }
}
