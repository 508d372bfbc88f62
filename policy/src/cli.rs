//! The `duet-relay policy …` and `duet-relay user …` commands: clap types and their `run`
//! functions.
//!
//! Owns the exact command surface scripts call (issue 6), parsing names into the model's
//! types (so a bad name gets the model's error, e.g. "single tokens, no spaces") and the
//! text and `--json` output. Does not own the rules (`model`), durability (`store`), or
//! the binary's top-level parser and exit codes (the relay's `main.rs`, which adds
//! `Policy { cmd: PolicyCommand }` and `User { cmd: UserCommand }` and turns an `Err` into
//! a message and a non-zero exit).
//!
//! Every command takes `--store PATH` (env `DUET_POLICY_STORE`); the default is
//! `<data dir>/policy`, the data directory being the one `run_policy`/`run_user` are
//! given (the relay's configured `data_dir`, `./duet-data` out of the box).
//! Changes are audited with the actor `cli:<login>` (`$SUDO_USER`, else `$USER`, else
//! `$LOGNAME`).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use crate::model::{user_id, CallingE2ee, Change, Effective, GroupName, PolicyName, PolicyView};
use crate::file_store::{Applied, PolicyStore};
use crate::PolicyError;

/// Where the policy store lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Policy store directory [default: <data dir>/policy, e.g. ./duet-data/policy]
    #[arg(long, value_name = "PATH", env = "DUET_POLICY_STORE")]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    fn open(&self, data_dir: &Path) -> Result<PolicyStore, PolicyError> {
        let path = self
            .store
            .clone()
            .unwrap_or_else(|| default_store_path(data_dir));
        Ok(PolicyStore::open(path)?)
    }
}

/// The store's default location under the relay's data directory.
pub fn default_store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("policy")
}

/// `duet-relay policy …`: policies and who is granted them.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// List every policy (Global first) with the users and groups granted it.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one policy: its setting and who holds it.
    Show {
        /// Policy name (a single token; `Global` is the default policy).
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Set a policy's calling-e2ee; creates the policy if new.
    Set {
        name: String,
        /// `disabled`: nobody under it can turn E2EE on. `disabled-user-override`: off by
        /// default, each user may turn it on.
        #[arg(long, value_enum, value_name = "SETTING")]
        calling_e2ee: CallingE2ee,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a policy. Refused while it is granted to users or groups (the error names
    /// them) unless --unassign is given. Global cannot be removed.
    Remove {
        name: String,
        /// Return the policy's users to inheritance (groups, then Global) and drop its
        /// group grants, then remove it.
        #[arg(long)]
        unassign: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Grant a policy to a user (one policy per user: replaces theirs) or to a group
    /// with a rank (lower rank wins among a user's groups); --none unassigns.
    Grant(GrantArgs),
    /// The policy that applies to a user, why, and the E2EE claim their tokens carry.
    Effective {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
}

/// `policy grant` arguments: exactly one of --user/--group, one of --policy/--none.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["user", "group"])))]
#[command(group(ArgGroup::new("assignment").required(true).args(["policy", "none"])))]
pub struct GrantArgs {
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub policy: Option<String>,
    /// Unassign: the user returns to inheritance (their groups, then Global); a group
    /// loses its grant.
    #[arg(long)]
    pub none: bool,
    /// Rank of a group grant, 1 or more, unique; required with --group --policy.
    #[arg(long, conflicts_with_all = ["user", "none"])]
    pub rank: Option<u32>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `duet-relay user …`: per-user settings.
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// The user's own "end-to-end encrypted calls" switch (same on all their devices).
    E2ee {
        #[arg(long)]
        user: String,
        #[arg(value_enum)]
        state: Switch,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Compliance recording: a recorded user can never be in an E2EE call.
    ComplianceRecording {
        #[arg(long)]
        user: String,
        #[arg(value_enum)]
        state: Switch,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace the user's group memberships (`--set ''` clears them).
    Groups {
        #[arg(long)]
        user: String,
        #[arg(long = "set", value_name = "G1,G2,...")]
        set: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    fn on(self) -> bool {
        self == Switch::On
    }
}

/// Runs a `policy` command, printing to stdout. `data_dir` is the relay's data
/// directory (the default store is `<data_dir>/policy`).
pub fn run_policy(cmd: PolicyCommand, data_dir: &Path) -> Result<(), PolicyError> {
    run_policy_to(cmd, data_dir, &mut io::stdout().lock())
}

/// Runs a `user` command, printing to stdout.
pub fn run_user(cmd: UserCommand, data_dir: &Path) -> Result<(), PolicyError> {
    run_user_to(cmd, data_dir, &mut io::stdout().lock())
}

fn actor() -> String {
    let login = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{login}")
}

/// [`run_policy`] writing to `out`.
pub fn run_policy_to(
    cmd: PolicyCommand,
    data_dir: &Path,
    out: &mut dyn Write,
) -> Result<(), PolicyError> {
    let w = |r: io::Result<()>| r.map_err(PolicyError::Output);
    match cmd {
        PolicyCommand::List { store, json } => {
            let views = store.open(data_dir)?.load()?.list();
            if json {
                w(print_json(out, &serde_json::json!({ "policies": views })))
            } else {
                w(views.iter().try_for_each(|v| write_list_line(out, v)))
            }
        }
        PolicyCommand::Show { name, store, json } => {
            let name = PolicyName::new(name)?;
            let view = store.open(data_dir)?.load()?.view(&name)?;
            if json {
                w(print_json(out, &view))
            } else {
                w(write_view(out, &view))
            }
        }
        PolicyCommand::Set {
            name,
            calling_e2ee,
            store,
        } => {
            let change = Change::SetPolicy {
                name: PolicyName::new(name)?,
                calling_e2ee,
            };
            let applied = store.open(data_dir)?.apply(&actor(), &change)?;
            w(report(out, &change, &applied))
        }
        PolicyCommand::Remove {
            name,
            unassign,
            store,
        } => {
            let change = Change::RemovePolicy {
                name: PolicyName::new(name)?,
                unassign,
            };
            let applied = store.open(data_dir)?.apply(&actor(), &change)?;
            w(report(out, &change, &applied))
        }
        PolicyCommand::Grant(g) => {
            let policy = match (&g.policy, g.none) {
                (Some(p), false) => Some(PolicyName::new(p.clone())?),
                _ => None,
            };
            let change = match (g.user, g.group) {
                (Some(user), _) => Change::GrantUser {
                    user: user_id(&user)?,
                    policy,
                },
                (None, Some(group)) => Change::GrantGroup {
                    group: GroupName::new(group)?,
                    policy,
                    rank: g.rank,
                },
                // clap's "target" group requires one of the two.
                (None, None) => unreachable!("clap requires --user or --group"),
            };
            let applied = g.store.open(data_dir)?.apply(&actor(), &change)?;
            w(report(out, &change, &applied))
        }
        PolicyCommand::Effective { user, store, json } => {
            let user = user_id(&user)?;
            let eff = store.open(data_dir)?.load()?.effective(&user);
            if json {
                w(print_json(out, &eff))
            } else {
                w(write_effective(out, &eff))
            }
        }
    }
}

/// [`run_user`] writing to `out`.
pub fn run_user_to(
    cmd: UserCommand,
    data_dir: &Path,
    out: &mut dyn Write,
) -> Result<(), PolicyError> {
    let (change, store) = match cmd {
        UserCommand::E2ee { user, state, store } => (
            Change::SetUserE2ee {
                user: user_id(&user)?,
                on: state.on(),
            },
            store,
        ),
        UserCommand::ComplianceRecording { user, state, store } => (
            Change::SetComplianceRecording {
                user: user_id(&user)?,
                on: state.on(),
            },
            store,
        ),
        UserCommand::Groups { user, set, store } => (
            Change::SetUserGroups {
                user: user_id(&user)?,
                groups: parse_groups(&set)?,
            },
            store,
        ),
    };
    let applied = store.open(data_dir)?.apply(&actor(), &change)?;
    report(out, &change, &applied).map_err(PolicyError::Output)
}

/// `G1,G2,...`; empty pieces are ignored so `--set ''` clears the memberships.
pub fn parse_groups(s: &str) -> Result<BTreeSet<GroupName>, PolicyError> {
    s.split(',')
        .filter(|g| !g.is_empty())
        .map(|g| GroupName::new(g).map_err(PolicyError::from))
        .collect()
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, v: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v).map_err(io::Error::other)?;
    writeln!(out)
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn holders(v: &PolicyView) -> String {
    let mut parts = Vec::new();
    if !v.users.is_empty() {
        parts.push(format!("users: {}", join(&v.users)));
    }
    if !v.groups.is_empty() {
        parts.push(format!(
            "groups: {}",
            join(
                v.groups
                    .iter()
                    .map(|g| format!("{} (rank {})", g.group, g.rank))
            )
        ));
    }
    if v.global {
        parts.push("everyone not assigned another policy".into());
    }
    if parts.is_empty() {
        "not assigned".into()
    } else {
        parts.join("; ")
    }
}

fn write_list_line(out: &mut dyn Write, v: &PolicyView) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<24} {}",
        v.name.as_str(),
        v.calling_e2ee.as_str(),
        holders(v)
    )
}

fn write_view(out: &mut dyn Write, v: &PolicyView) -> io::Result<()> {
    writeln!(out, "policy:        {}", v.name)?;
    writeln!(out, "calling-e2ee:  {}", v.calling_e2ee)?;
    writeln!(out, "assigned to:   {}", holders(v))
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn write_effective(out: &mut dyn Write, e: &Effective) -> io::Result<()> {
    writeln!(out, "user:                 {}", e.user)?;
    writeln!(out, "policy:               {} ({})", e.policy, e.source)?;
    writeln!(out, "calling-e2ee:         {}", e.setting)?;
    writeln!(out, "user switch:          {}", on_off(e.user_switch))?;
    writeln!(
        out,
        "compliance recording: {}",
        on_off(e.compliance_recording)
    )?;
    let claim = serde_json::to_value(e.claim).unwrap_or_default();
    writeln!(
        out,
        "claim:                {} ({})",
        claim.as_str().unwrap_or("?"),
        e.reason()
    )
}

/// One line saying what a change did.
fn report(out: &mut dyn Write, change: &Change, applied: &Applied) -> io::Result<()> {
    let what = match change {
        Change::SetPolicy { name, calling_e2ee } => {
            format!("policy {name}: calling-e2ee {calling_e2ee}")
        }
        Change::RemovePolicy { name, .. } => format!("policy {name} removed"),
        Change::GrantUser { user, policy } => match policy.as_ref().filter(|p| !p.is_global()) {
            Some(p) => format!("user {user}: granted policy {p}"),
            None => format!(
                "user {user}: no direct policy (now {})",
                applied.state.effective(user).policy
            ),
        },
        Change::GrantGroup {
            group,
            policy,
            rank,
        } => match (policy, rank) {
            (Some(p), Some(r)) => format!("group {group}: granted policy {p} at rank {r}"),
            _ => format!("group {group}: no policy grant"),
        },
        Change::SetUserE2ee { user, on } => {
            format!("user {user}: end-to-end encrypted calls {}", on_off(*on))
        }
        Change::SetComplianceRecording { user, on } => {
            format!("user {user}: compliance recording {}", on_off(*on))
        }
        Change::SetUserGroups { user, groups } => {
            if groups.is_empty() {
                format!("user {user}: in no groups")
            } else {
                format!("user {user}: groups {}", join(groups))
            }
        }
    };
    if applied.changed {
        writeln!(out, "{what} (revision {})", applied.state.revision)
    } else {
        writeln!(out, "{what} (unchanged)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(Subcommand)]
    enum Top {
        Policy {
            #[command(subcommand)]
            cmd: PolicyCommand,
        },
        User {
            #[command(subcommand)]
            cmd: UserCommand,
        },
    }

    fn run(dir: &Path, args: &[&str]) -> Result<String, PolicyError> {
        let store = dir.to_str().unwrap();
        let mut argv = vec!["duet-relay"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--store", store]);
        let cli = Cli::try_parse_from(argv).expect("parses");
        let mut out = Vec::new();
        match cli.cmd {
            Top::Policy { cmd } => run_policy_to(cmd, dir, &mut out)?,
            Top::User { cmd } => run_user_to(cmd, dir, &mut out)?,
        }
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_surface_parses_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(run(d, &["policy", "list"]).unwrap().contains("Global"));
        run(
            d,
            &[
                "policy",
                "set",
                "Pilot",
                "--calling-e2ee",
                "disabled-user-override",
            ],
        )
        .unwrap();
        run(
            d,
            &["policy", "grant", "--user", "alice", "--policy", "Pilot"],
        )
        .unwrap();
        run(
            d,
            &[
                "policy", "grant", "--group", "eng", "--policy", "Pilot", "--rank", "1",
            ],
        )
        .unwrap();
        run(d, &["user", "e2ee", "--user", "alice", "on"]).unwrap();
        run(
            d,
            &["user", "groups", "--user", "bob", "--set", "eng,sales"],
        )
        .unwrap();
        run(d, &["user", "compliance-recording", "--user", "bob", "on"]).unwrap();
        let eff = run(d, &["policy", "effective", "--user", "alice", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&eff).unwrap();
        assert_eq!(v["claim"], "allowed");
        assert_eq!(v["source"]["kind"], "direct");
        let eff = run(d, &["policy", "effective", "--user", "bob"]).unwrap();
        assert!(eff.contains("group eng (rank 1)"), "{eff}");
        assert!(eff.contains("compliance_recording"), "{eff}");
        let err = run(d, &["policy", "remove", "Pilot"]).unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
        run(d, &["policy", "grant", "--user", "alice", "--none"]).unwrap();
        run(d, &["policy", "remove", "Pilot", "--unassign"]).unwrap();
        let err = run(
            d,
            &["policy", "set", "My Policy", "--calling-e2ee", "disabled"],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no spaces"), "{err}");
        assert!(parse_groups("").unwrap().is_empty());
    }

    #[test]
    fn grant_needs_one_target_and_one_assignment() {
        for bad in [
            &["policy", "grant", "--policy", "P"][..],
            &["policy", "grant", "--user", "a"],
            &["policy", "grant", "--user", "a", "--group", "g", "--none"],
            &["policy", "grant", "--user", "a", "--policy", "P", "--none"],
            &[
                "policy", "grant", "--user", "a", "--policy", "P", "--rank", "1",
            ],
        ] {
            let mut argv = vec!["duet-relay"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
