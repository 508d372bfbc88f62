//! Policy as code: `policy apply -f tenant.toml [--dry-run]`.
//!
//! Owns the tenant file format, validating it (every error names its field), and the
//! difference between the file and the store as a list of [`Change`]s, which the caller
//! applies in one transaction (each change audited) or only prints. Applying the same
//! file twice changes nothing the second time.
//!
//! ```toml
//! [policies]              # every policy; one missing here is removed (its holders
//! Global = "disabled"     # return to inheritance). Global is never removed.
//! E2EE-Pilot = "disabled-user-override"
//! Secure = "required"
//!
//! [groups.eng]            # every group grant; one missing here is dropped
//! policy = "E2EE-Pilot"
//! rank = 1
//!
//! [users]                 # direct assignments the file owns ("none": inheritance);
//! alice = "Secure"        # users not listed are left as they are
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use duet_proto::UserId;
use serde::Deserialize;

use crate::model::{CallingE2ee, Change, GroupName, PolicyName};
use crate::store::Store;
use crate::PolicyError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policies: BTreeMap<String, CallingE2ee>,
    #[serde(default)]
    groups: BTreeMap<String, GroupEntry>,
    #[serde(default)]
    users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    policy: String,
    rank: u32,
}

/// A validated tenant file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub policies: BTreeMap<PolicyName, CallingE2ee>,
    pub groups: BTreeMap<GroupName, (PolicyName, u32)>,
    /// `None`: the user inherits (no direct policy).
    pub users: BTreeMap<UserId, Option<PolicyName>>,
}

fn bad(field: String, msg: impl std::fmt::Display) -> PolicyError {
    PolicyError::Tenant(format!("{field}: {msg}"))
}

impl Tenant {
    /// Parses and validates a tenant file's text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let f: File =
            toml::from_str(text).map_err(|e| PolicyError::Tenant(format!("tenant file: {e}")))?;
        let mut policies = BTreeMap::new();
        for (name, setting) in f.policies {
            let n = PolicyName::new(&name).map_err(|e| bad(format!("policies.{name}"), e))?;
            policies.insert(n, setting);
        }
        let known = |p: &PolicyName| p.is_global() || policies.contains_key(p);
        let mut groups = BTreeMap::new();
        let mut ranks: BTreeMap<u32, String> = BTreeMap::new();
        for (name, g) in f.groups {
            let field = format!("groups.{name}");
            let n = GroupName::new(&name).map_err(|e| bad(field.clone(), e))?;
            let p = PolicyName::new(&g.policy).map_err(|e| bad(format!("{field}.policy"), e))?;
            if !known(&p) {
                return Err(bad(
                    format!("{field}.policy"),
                    format!("no policy {p:?} in [policies]"),
                ));
            }
            if g.rank == 0 {
                return Err(bad(format!("{field}.rank"), "must be 1 or more"));
            }
            if let Some(other) = ranks.insert(g.rank, name.clone()) {
                return Err(bad(
                    format!("{field}.rank"),
                    format!(
                        "rank {} is also given to group {other:?}; ranks are unique",
                        g.rank
                    ),
                ));
            }
            groups.insert(n, (p, g.rank));
        }
        let mut users = BTreeMap::new();
        for (user, policy) in f.users {
            let field = format!("users.{user}");
            let u = UserId::new(&user).map_err(|e| bad(field.clone(), e))?;
            let p = if policy == "none" {
                None
            } else {
                let p = PolicyName::new(&policy).map_err(|e| bad(field.clone(), e))?;
                if !known(&p) {
                    return Err(bad(field, format!("no policy {p:?} in [policies]")));
                }
                Some(p).filter(|p| !p.is_global())
            };
            users.insert(u, p);
        }
        Ok(Self {
            policies,
            groups,
            users,
        })
    }

    /// The changes that make `store` match this file, in an order that never trips a
    /// rule half-way (new policies first, grants that move dropped before re-granted,
    /// removed policies last).
    pub fn plan(&self, store: &dyn Store) -> Result<Plan, PolicyError> {
        let current = store.list()?;
        let mut changes = Vec::new();
        let mut lines = Vec::new();
        let cur_setting: BTreeMap<&PolicyName, CallingE2ee> =
            current.iter().map(|v| (&v.name, v.calling_e2ee)).collect();
        for (name, setting) in &self.policies {
            match cur_setting.get(name) {
                Some(s) if s == setting => {}
                Some(s) => lines.push(format!("~ policy {name}: calling-e2ee {s} -> {setting}")),
                None => lines.push(format!("+ policy {name}: calling-e2ee {setting}")),
            }
            if cur_setting.get(name) != Some(setting) {
                changes.push(Change::SetPolicy {
                    name: name.clone(),
                    calling_e2ee: *setting,
                });
            }
        }
        let cur_grants: BTreeMap<GroupName, (PolicyName, u32)> = current
            .iter()
            .flat_map(|v| {
                v.groups
                    .iter()
                    .map(|g| (g.group.clone(), (v.name.clone(), g.rank)))
            })
            .collect();
        let mut adds = Vec::new();
        for (group, (p, rank)) in &cur_grants {
            match self.groups.get(group) {
                Some(want) if want == &(p.clone(), *rank) => {}
                Some(_) => {
                    // Re-granted below; dropped first so ranks can be swapped.
                    changes.push(Change::GrantGroup {
                        group: group.clone(),
                        policy: None,
                        rank: None,
                    });
                }
                None => {
                    lines.push(format!("- group {group}: grant of {p} (rank {rank})"));
                    changes.push(Change::GrantGroup {
                        group: group.clone(),
                        policy: None,
                        rank: None,
                    });
                }
            }
        }
        for (group, (p, rank)) in &self.groups {
            match cur_grants.get(group) {
                Some(cur) if cur == &(p.clone(), *rank) => {}
                Some((cp, cr)) => {
                    lines.push(format!(
                        "~ group {group}: {cp} (rank {cr}) -> {p} (rank {rank})"
                    ));
                    adds.push(Change::GrantGroup {
                        group: group.clone(),
                        policy: Some(p.clone()),
                        rank: Some(*rank),
                    });
                }
                None => {
                    lines.push(format!("+ group {group}: grant {p} at rank {rank}"));
                    adds.push(Change::GrantGroup {
                        group: group.clone(),
                        policy: Some(p.clone()),
                        rank: Some(*rank),
                    });
                }
            }
        }
        changes.extend(adds);
        for (user, want) in &self.users {
            let have = store.user(user)?.policy;
            if &have != want {
                let show = |p: &Option<PolicyName>| {
                    p.as_ref().map_or("(none)".to_owned(), |p| p.to_string())
                };
                lines.push(format!(
                    "~ user {user}: policy {} -> {}",
                    show(&have),
                    show(want)
                ));
                changes.push(Change::GrantUser {
                    user: user.clone(),
                    policy: want.clone(),
                });
            }
        }
        let listed: BTreeSet<&PolicyName> = self.policies.keys().collect();
        for v in &current {
            if !v.global && !listed.contains(&v.name) {
                lines.push(format!(
                    "- policy {} (its {} users and {} groups return to inheritance)",
                    v.name,
                    v.users.len(),
                    v.groups.len()
                ));
                changes.push(Change::RemovePolicy {
                    name: v.name.clone(),
                    unassign: true,
                });
            }
        }
        Ok(Plan { changes, lines })
    }
}

/// The changes a tenant file needs, and their description (one line each).
#[derive(Debug, Clone)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub lines: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
    pub fn text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        s
    }
}
