//! The rules, written once over a store transaction.
//!
//! Owns how each [`Change`] reads and writes the state (what it refuses, what a no-op is,
//! which users it touches), the evaluation of a user's effective policy from the few rows
//! that decide it, and the before/after the audit log records. Every store runs these same
//! functions inside its own transaction through the [`Tx`] trait: the in-memory
//! [`PolicyState`](crate::model::PolicyState) (the JSON file format), SQLite and
//! PostgreSQL. Does not own transactions, durability or the audit table (the stores), nor
//! names and the claim's precedence (`model`).
//!
//! A change that fails half-way returns its error and leaves the transaction to be rolled
//! back by the caller: nothing is ever half-applied.

use std::collections::BTreeSet;

use duet_proto::UserId;
use serde_json::{json, Value};

use crate::model::{
    claim, CallingE2ee, Change, Effective, GroupGrant, GroupGrantView, GroupName, ModelError,
    PolicyName, PolicyView, Source, UserRecord, MAX_BATCH_USERS, MAX_GROUPS_PER_USER,
};
use crate::store::StoreError;
use crate::PolicyError;

type R<T> = Result<T, StoreError>;

/// Primitive reads and writes of one transaction. Implementations do no checking: the
/// rules are all here.
pub(crate) trait Tx {
    fn revision(&mut self) -> R<u64>;
    fn set_revision(&mut self, rev: u64) -> R<()>;
    fn policy(&mut self, name: &PolicyName) -> R<Option<CallingE2ee>>;
    /// Every policy (any order).
    fn policies(&mut self) -> R<Vec<(PolicyName, CallingE2ee)>>;
    fn put_policy(&mut self, name: &PolicyName, setting: CallingE2ee) -> R<()>;
    fn delete_policy(&mut self, name: &PolicyName) -> R<()>;
    /// Users assigned `name` directly, by id.
    fn policy_users(&mut self, name: &PolicyName) -> R<Vec<UserId>>;
    /// Groups granted `name` (any order).
    fn policy_grants(&mut self, name: &PolicyName) -> R<Vec<GroupGrantView>>;
    fn user(&mut self, user: &UserId) -> R<Option<UserRecord>>;
    /// Stores a non-default record; `old` is what [`Tx::user`] returned, so memberships can
    /// be written as a difference.
    fn put_user(&mut self, user: &UserId, old: Option<&UserRecord>, rec: &UserRecord) -> R<()>;
    fn delete_user(&mut self, user: &UserId) -> R<()>;
    fn grant(&mut self, group: &GroupName) -> R<Option<GroupGrant>>;
    fn group_with_rank(&mut self, rank: u32) -> R<Option<GroupName>>;
    fn put_grant(&mut self, group: &GroupName, grant: &GroupGrant) -> R<()>;
    fn delete_grant(&mut self, group: &GroupName) -> R<()>;
    /// Members of `group`, by id.
    fn group_members(&mut self, group: &GroupName) -> R<Vec<UserId>>;
    /// The lowest-ranked grant among the groups of `rec` (the record of `user`).
    fn best_grant(&mut self, user: &UserId, rec: &UserRecord)
        -> R<Option<(GroupName, GroupGrant)>>;
}

/// What a change did, for the audit record and the caller.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub revision: u64,
    pub before: Value,
    pub after: Value,
    /// Users whose record changed (indexes the audit log by user).
    pub users: Vec<UserId>,
}

/// The policy that applies to `user`: at most three reads (the user's row, their best
/// group grant, the policy's setting).
pub(crate) fn effective(tx: &mut dyn Tx, user: &UserId) -> R<Effective> {
    let rec = tx.user(user)?;
    let direct = rec.as_ref().and_then(|r| r.policy.clone());
    let (policy, source) = match (direct, &rec) {
        (Some(p), _) => (p, Source::Direct),
        (None, Some(r)) => match tx.best_grant(user, r)? {
            Some((group, grant)) => (
                grant.policy,
                Source::Group {
                    group,
                    rank: grant.rank,
                },
            ),
            None => (PolicyName::global(), Source::GlobalDefault),
        },
        (None, None) => (PolicyName::global(), Source::GlobalDefault),
    };
    // Assignments always name existing policies (the rules keep it so); a store edited by
    // hand that broke this gets the safest setting rather than a panic.
    let setting = tx.policy(&policy)?.unwrap_or(CallingE2ee::Disabled);
    let user_switch = rec.as_ref().is_some_and(|r| r.e2ee);
    let compliance_recording = rec.as_ref().is_some_and(|r| r.compliance_recording);
    Ok(Effective {
        user: user.clone(),
        policy,
        source,
        setting,
        user_switch,
        compliance_recording,
        claim: claim(setting, user_switch, compliance_recording),
    })
}

/// A policy and who holds it.
pub(crate) fn view(tx: &mut dyn Tx, name: &PolicyName) -> Result<PolicyView, PolicyError> {
    let calling_e2ee = tx
        .policy(name)?
        .ok_or_else(|| ModelError::UnknownPolicy(name.to_string()))?;
    let users = tx.policy_users(name)?;
    let mut groups = tx.policy_grants(name)?;
    groups.sort_by_key(|g| g.rank);
    Ok(PolicyView {
        name: name.clone(),
        calling_e2ee,
        global: name.is_global(),
        users,
        groups,
    })
}

/// Every policy, Global first, then by name.
pub(crate) fn list(tx: &mut dyn Tx) -> Result<Vec<PolicyView>, PolicyError> {
    let mut names: Vec<PolicyName> = tx.policies()?.into_iter().map(|(n, _)| n).collect();
    names.sort_by(|a, b| (!a.is_global(), a.as_str()).cmp(&(!b.is_global(), b.as_str())));
    names.iter().map(|n| view(tx, n)).collect()
}

fn user_subject(tx: &mut dyn Tx, user: &UserId) -> R<Value> {
    let rec = tx.user(user)?.unwrap_or_default();
    let eff = effective(tx, user)?;
    Ok(json!({
        "user": user,
        "policy": rec.policy,
        "e2ee": rec.e2ee,
        "compliance_recording": rec.compliance_recording,
        "groups": rec.groups,
        "effective_policy": eff.policy,
        "claim": eff.claim,
    }))
}

fn policy_subject(tx: &mut dyn Tx, name: &PolicyName) -> R<Value> {
    match tx.policy(name)? {
        None => Ok(Value::Null),
        Some(setting) => {
            // Counts, not lists: a policy may hold a million users.
            let users = tx.policy_users(name)?.len();
            let mut groups = tx.policy_grants(name)?;
            groups.sort_by_key(|g| g.rank);
            Ok(json!({
                "name": name,
                "calling_e2ee": setting,
                "global": name.is_global(),
                "users": users,
                "groups": groups,
            }))
        }
    }
}

fn group_subject(tx: &mut dyn Tx, group: &GroupName) -> R<Value> {
    Ok(match tx.grant(group)? {
        Some(g) => json!({ "group": group, "policy": g.policy, "rank": g.rank }),
        None => json!({ "group": group, "policy": null }),
    })
}

/// The touched part of the state, as the audit log's before/after and the API's `result`.
pub(crate) fn subject(tx: &mut dyn Tx, change: &Change) -> R<Value> {
    match change {
        Change::SetPolicy { name, .. } | Change::RemovePolicy { name, .. } => {
            policy_subject(tx, name)
        }
        Change::GrantGroup { group, .. } => group_subject(tx, group),
        Change::GrantUser { user, .. }
        | Change::SetUserE2ee { user, .. }
        | Change::SetComplianceRecording { user, .. }
        | Change::SetUserGroups { user, .. } => user_subject(tx, user),
        Change::GrantUsers { users, policy } => Ok(json!({
            "policy": policy,
            "users": users.len(),
            "holders": match policy.as_ref().filter(|p| !p.is_global()) {
                Some(p) => tx.policy_users(p)?.len(),
                None => 0,
            },
        })),
        Change::SetGroupMembers { group, .. } => Ok(json!({
            "group": group,
            "members": tx.group_members(group)?.len(),
        })),
    }
}

/// Reads, changes and writes one user's record. Returns whether it changed.
fn update_user(
    tx: &mut dyn Tx,
    user: &UserId,
    f: impl FnOnce(&mut UserRecord),
) -> Result<bool, PolicyError> {
    let old = tx.user(user)?;
    let mut rec = old.clone().unwrap_or_default();
    f(&mut rec);
    if rec.groups.len() > MAX_GROUPS_PER_USER {
        return Err(ModelError::TooManyGroups {
            user: user.to_string(),
            count: rec.groups.len(),
        }
        .into());
    }
    if old.as_ref() == Some(&rec) || (old.is_none() && rec.is_default()) {
        return Ok(false);
    }
    // Default records are not stored: the store holds only users something was set for.
    if rec.is_default() {
        tx.delete_user(user)?;
    } else {
        tx.put_user(user, old.as_ref(), &rec)?;
    }
    Ok(true)
}

fn check_batch(field: &'static str, n: usize) -> Result<(), ModelError> {
    if n > MAX_BATCH_USERS {
        return Err(ModelError::BatchTooLarge { field, count: n });
    }
    Ok(())
}

/// Global is what inheritance ends in: a direct "Global" is stored as none. Any other
/// policy must exist.
fn direct_policy(
    tx: &mut dyn Tx,
    policy: &Option<PolicyName>,
) -> Result<Option<PolicyName>, PolicyError> {
    match policy {
        Some(p) if !p.is_global() => {
            if tx.policy(p)?.is_none() {
                return Err(ModelError::UnknownPolicy(p.to_string()).into());
            }
            Ok(Some(p.clone()))
        }
        _ => Ok(None),
    }
}

/// Applies one change inside `tx`. `Ok(None)` for a no-op (nothing written: the caller
/// commits nothing and logs nothing). On `Err` the caller must roll `tx` back.
pub(crate) fn apply(tx: &mut dyn Tx, change: &Change) -> Result<Option<Outcome>, PolicyError> {
    let batch = matches!(
        change,
        Change::GrantUsers { .. } | Change::SetGroupMembers { .. }
    );
    let before = subject(tx, change)?;
    let mut users: Vec<UserId> = Vec::new();
    let changed = match change {
        Change::SetPolicy { name, calling_e2ee } => {
            if tx.policy(name)? == Some(*calling_e2ee) {
                false
            } else {
                tx.put_policy(name, *calling_e2ee)?;
                true
            }
        }
        Change::RemovePolicy { name, unassign } => {
            if name.is_global() {
                return Err(ModelError::GlobalIsPermanent.into());
            }
            let v = view(tx, name)?;
            if !unassign && (!v.users.is_empty() || !v.groups.is_empty()) {
                return Err(ModelError::PolicyInUse {
                    name: name.to_string(),
                    users: v.users.iter().map(|u| u.to_string()).collect(),
                    groups: v.groups.iter().map(|g| g.group.to_string()).collect(),
                }
                .into());
            }
            for user in &v.users {
                update_user(tx, user, |r| r.policy = None)?;
            }
            users = v.users;
            for g in &v.groups {
                tx.delete_grant(&g.group)?;
            }
            tx.delete_policy(name)?;
            true
        }
        Change::GrantUser { user, policy } => {
            let policy = direct_policy(tx, policy)?;
            let c = update_user(tx, user, |r| r.policy = policy)?;
            if c {
                users.push(user.clone());
            }
            c
        }
        Change::GrantUsers {
            users: list,
            policy,
        } => {
            check_batch("users", list.len())?;
            let policy = direct_policy(tx, policy)?;
            let unique: BTreeSet<&UserId> = list.iter().collect();
            for user in unique {
                let p = policy.clone();
                if update_user(tx, user, |r| r.policy = p)? {
                    users.push(user.clone());
                }
            }
            !users.is_empty()
        }
        Change::GrantGroup {
            group,
            policy,
            rank,
        } => match policy {
            None => {
                if tx.grant(group)?.is_some() {
                    tx.delete_grant(group)?;
                    true
                } else {
                    false
                }
            }
            Some(p) => {
                if tx.policy(p)?.is_none() {
                    return Err(ModelError::UnknownPolicy(p.to_string()).into());
                }
                let rank = rank.ok_or(ModelError::RankRequired)?;
                if rank == 0 {
                    return Err(ModelError::RankZero.into());
                }
                if let Some(other) = tx.group_with_rank(rank)?.filter(|g| g != group) {
                    return Err(ModelError::RankTaken {
                        rank,
                        group: other.to_string(),
                    }
                    .into());
                }
                let grant = GroupGrant {
                    policy: p.clone(),
                    rank,
                };
                if tx.grant(group)?.as_ref() == Some(&grant) {
                    false
                } else {
                    tx.put_grant(group, &grant)?;
                    true
                }
            }
        },
        Change::SetUserE2ee { user, on } => {
            let c = update_user(tx, user, |r| r.e2ee = *on)?;
            if c {
                users.push(user.clone());
            }
            c
        }
        Change::SetComplianceRecording { user, on } => {
            let c = update_user(tx, user, |r| r.compliance_recording = *on)?;
            if c {
                users.push(user.clone());
            }
            c
        }
        Change::SetUserGroups { user, groups } => {
            let c = update_user(tx, user, |r| r.groups = groups.clone())?;
            if c {
                users.push(user.clone());
            }
            c
        }
        Change::SetGroupMembers {
            group,
            users: members,
        } => {
            check_batch("users", members.len())?;
            let want: BTreeSet<&UserId> = members.iter().collect();
            let have_list = tx.group_members(group)?;
            let have: BTreeSet<&UserId> = have_list.iter().collect();
            for user in have.difference(&want) {
                if update_user(tx, user, |r| {
                    r.groups.remove(group);
                })? {
                    users.push((*user).clone());
                }
            }
            for user in want.difference(&have) {
                if update_user(tx, user, |r| {
                    r.groups.insert(group.clone());
                })? {
                    users.push((*user).clone());
                }
            }
            !users.is_empty()
        }
    };
    if !changed {
        return Ok(None);
    }
    let revision = tx.revision()? + 1;
    tx.set_revision(revision)?;
    let mut after = subject(tx, change)?;
    if batch {
        if let Value::Object(m) = &mut after {
            m.insert("changed".into(), json!(users.len()));
        }
    }
    Ok(Some(Outcome {
        revision,
        before,
        after,
        users,
    }))
}
