//! The `duet-relay policy …` and `duet-relay user …` commands: clap types and their `run`
//! functions (feature `cli`).
//!
//! Owns the exact command surface scripts call (docs/administering-e2ee.md), parsing names
//! into the model's types (so a bad name gets the model's error, e.g. "single tokens, no
//! spaces"), the text and `--json` output, and `policy serve` (the admin and token API).
//! Does not own the rules (`model`, `engine`), durability (`store`), or the binary's
//! top-level parser and exit codes (the relay's `main.rs`, which embeds
//! `Policy { cmd: PolicyCommand }` and `User { cmd: UserCommand }`).
//!
//! Every command takes `--store LOCATOR` (env `DUET_POLICY_STORE`): a directory (holding
//! `policy.db`), a `.db` file, or a `postgres://` DSN; the default is `<data dir>/policy`.
//! Changes are audited with the actor `cli:<login>` (`$SUDO_USER`, else `$USER`, else
//! `$LOGNAME`) and the credential `local-cli`.
//!
//! Size: ~1,000 lines: one function per subcommand of the documented CLI surface
//! (docs/administering-e2ee.md), kept beside its argument types.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use duet_proto::{NodeId, SessionId};

use crate::model::{user_id, CallingE2ee, Change, Effective, GroupName, PolicyName, PolicyView};
use crate::placement::{NodeSet, NodeSource};
use crate::store::{self, Actor, Applied, AuditQuery, AuditRecord, Credential, Role, Store};
use crate::tenant::Tenant;
use crate::PolicyError;

/// Where the policy store lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Policy store: a directory (holding policy.db), a .db file, or a postgres:// DSN
    /// [default: <data dir>/policy, e.g. ./duet-data/policy]
    #[arg(long, value_name = "LOCATOR", env = "DUET_POLICY_STORE")]
    pub store: Option<String>,
}

impl StoreArgs {
    pub fn open(&self, data_dir: &Path) -> Result<Box<dyn Store>, PolicyError> {
        let loc = self
            .store
            .clone()
            .unwrap_or_else(|| default_store_path(data_dir).display().to_string());
        store::open(&loc)
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
        /// default, each user may turn it on. `required`: every call is E2EE or does not
        /// happen.
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
    /// Grant a policy to a user (one policy per user: replaces theirs), to every user
    /// listed in a file (--users-from, one id a line, one transaction), or to a group
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
    /// Make the store match a tenant file (policies, group grants and ranks, direct
    /// assignments): prints the difference, applies it in one transaction, audited.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "TENANT.toml")]
        file: PathBuf,
        /// Print the difference only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The audit log, newest first.
    Audit {
        /// Only changes that touched this user.
        #[arg(long)]
        user: Option<String>,
        /// Only changes since: a date (2026-12-01), an instant (2026-12-01T09:30:00Z) or a
        /// duration ago (2h, 30m).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Replace the store's whole state with a policy.json (the file store of earlier
    /// versions, or an export). One audited change.
    Import {
        /// A policy.json, or the directory holding it.
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write the whole state as policy.json (backup, diff, import elsewhere).
    Export {
        /// Output file [default: stdout]
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Named admin API credentials and their roles.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Serve the admin API and the token endpoint over HTTP.
    Serve(ServeArgs),
}

/// `policy grant` arguments: exactly one of --user/--users-from/--group, one of
/// --policy/--none.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["user", "group", "users_from"])))]
#[command(group(ArgGroup::new("assignment").required(true).args(["policy", "none"])))]
pub struct GrantArgs {
    #[arg(long)]
    pub user: Option<String>,
    /// A file of user ids, one a line: a batch assignment in one transaction.
    #[arg(long, value_name = "FILE")]
    pub users_from: Option<PathBuf>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub policy: Option<String>,
    /// Unassign: the user returns to inheritance (their groups, then Global); a group
    /// loses its grant.
    #[arg(long)]
    pub none: bool,
    /// Rank of a group grant, 1 or more, unique; required with --group --policy.
    #[arg(long, conflicts_with_all = ["user", "users_from", "none"])]
    pub rank: Option<u32>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CredentialCommand {
    /// Create (or replace) a credential; prints its secret once.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[command(flatten)]
        store: StoreArgs,
    },
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    Remove {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Listen address (keep it private or put TLS in front: credentials are bearer tokens)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// A file holding one more credential (>= 16 characters), named `admin`, role admin
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Token signing key (hex Ed25519 seed); enables POST /v1/tokens
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Key id written into minted tokens
    #[arg(long, value_name = "ID", default_value = "default")]
    pub key_id: String,
    /// Relay nodes tokens are placed on: static:<n1,n2,…>, dns-srv:<name>[@ip:port],
    /// dns-a:<name>[@ip:port] (re-read every 5 s), k8s:<namespace>/<service>[:<port-name>]
    /// (EndpointSlices, watched; build feature `kubernetes`) [default: no placement]
    #[arg(long, value_name = "SOURCE")]
    pub nodes_from: Option<String>,
    /// Longest token lifetime the endpoint mints, seconds
    #[arg(long, default_value_t = 3600)]
    pub max_ttl_secs: u64,
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

fn actor() -> Actor {
    let login = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    Actor::new(format!("cli:{login}"), "local-cli")
}

fn read_users(path: &Path) -> Result<Vec<duet_proto::UserId>, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| store::StoreError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            user_id(l).map_err(|e| {
                PolicyError::Tenant(format!("{}: line {}: {e}", path.display(), i + 1))
            })
        })
        .collect()
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
            let views = store.open(data_dir)?.list()?;
            if json {
                w(print_json(out, &serde_json::json!({ "policies": views })))
            } else {
                w(views.iter().try_for_each(|v| write_list_line(out, v)))
            }
        }
        PolicyCommand::Show { name, store, json } => {
            let name = PolicyName::new(name)?;
            let view = store.open(data_dir)?.view(&name)?;
            w(print_as(out, json, &view, write_view))
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
            apply_and_report(&store, data_dir, out, &change)
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
            apply_and_report(&store, data_dir, out, &change)
        }
        PolicyCommand::Grant(g) => {
            let policy = match (&g.policy, g.none) {
                (Some(p), false) => Some(PolicyName::new(p.clone())?),
                _ => None,
            };
            let change = match (g.user, g.users_from, g.group) {
                (Some(user), _, _) => Change::GrantUser {
                    user: user_id(&user)?,
                    policy,
                },
                (None, Some(file), _) => Change::GrantUsers {
                    users: read_users(&file)?,
                    policy,
                },
                (None, None, Some(group)) => Change::GrantGroup {
                    group: GroupName::new(group)?,
                    policy,
                    rank: g.rank,
                },
                // clap's "target" group requires one of the three.
                (None, None, None) => {
                    return Err(PolicyError::Tenant(
                        "grant needs --user, --users-from or --group".into(),
                    ))
                }
            };
            apply_and_report(&g.store, data_dir, out, &change)
        }
        PolicyCommand::Effective { user, store, json } => {
            let user = user_id(&user)?;
            let eff = store.open(data_dir)?.effective(&user)?;
            w(print_as(out, json, &eff, write_effective))
        }
        PolicyCommand::Apply {
            file,
            dry_run,
            store,
        } => {
            let text = std::fs::read_to_string(&file).map_err(|source| store::StoreError::Io {
                op: "read",
                path: file.clone(),
                source,
            })?;
            let tenant = Tenant::parse(&text)
                .map_err(|e| PolicyError::Tenant(format!("{}: {e}", file.display())))?;
            let s = store.open(data_dir)?;
            let plan = tenant.plan(&*s)?;
            w(out.write_all(plan.text().as_bytes()))?;
            if plan.is_empty() {
                return w(writeln!(
                    out,
                    "no changes: the store matches {}",
                    file.display()
                ));
            }
            if dry_run {
                return w(writeln!(
                    out,
                    "dry run: {} changes not applied",
                    plan.changes.len()
                ));
            }
            let applied = s.apply_all(&actor(), &plan.changes)?;
            let rev = applied.last().map_or(0, |a| a.revision);
            w(writeln!(
                out,
                "applied {} changes (revision {rev})",
                applied.iter().filter(|a| a.changed).count()
            ))
        }
        PolicyCommand::Audit {
            user,
            since,
            limit,
            store,
            json,
        } => {
            let q = AuditQuery {
                user: user.as_deref().map(user_id).transpose()?,
                since_ms: since.as_deref().map(parse_since).transpose()?,
                limit,
            };
            let records = store.open(data_dir)?.audit(&q)?;
            if json {
                w(print_json(out, &serde_json::json!({ "records": records })))
            } else {
                w(records.iter().try_for_each(|r| write_audit(out, r)))
            }
        }
        PolicyCommand::Import { from, store } => {
            let path = if from.is_dir() {
                from.join(crate::file_store::STATE_FILE)
            } else {
                from
            };
            let bytes = std::fs::read(&path).map_err(|source| store::StoreError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
            let state = crate::file_store::parse_state(&bytes, &path)?;
            let s = match store.open(data_dir) {
                // Importing into the directory that holds the old policy.json: that is
                // the migration, so create the database beside it.
                Err(PolicyError::Store(store::StoreError::NeedsImport { dir, .. })) => Box::new(
                    store::SqliteStore::open_migrating(dir.join(store::SQLITE_FILE))?,
                ),
                r => r?,
            };
            let applied = s.import(&actor(), &state)?;
            w(writeln!(
                out,
                "imported {} into {} (revision {}): {}",
                path.display(),
                s.describe(),
                applied.revision,
                applied.after
            ))
        }
        PolicyCommand::Export { to, store } => {
            let state = store.open(data_dir)?.export()?;
            let mut json = serde_json::to_vec_pretty(&state)
                .map_err(|e| PolicyError::Output(io::Error::other(e)))?;
            json.push(b'\n');
            match to {
                Some(p) => std::fs::write(&p, json).map_err(PolicyError::Output),
                None => w(out.write_all(&json)),
            }
        }
        PolicyCommand::Credential(c) => run_credential(c, data_dir, out),
        PolicyCommand::Serve(a) => serve_with(a, data_dir, |listener, app| async move {
            axum::serve(listener, app).await
        }),
    }
}

fn run_credential(
    cmd: CredentialCommand,
    data_dir: &Path,
    out: &mut dyn Write,
) -> Result<(), PolicyError> {
    let w = |r: io::Result<()>| r.map_err(PolicyError::Output);
    match cmd {
        CredentialCommand::Add { name, role, store } => {
            check_credential_name(&name)?;
            let mut raw = [0u8; 24];
            aws_lc_rs::rand::fill(&mut raw[..]).map_err(|_| PolicyError::Clock)?;
            let secret = format!("duetadm_{}", duet_proto::hex::encode(&raw));
            let cred = Credential {
                name: name.clone(),
                role,
                created_ms: store::now_ms(),
            };
            store.open(data_dir)?.put_credential(
                &actor(),
                &cred,
                &store::secret_sha256(&secret),
            )?;
            w(writeln!(
                out,
                "credential {name} ({}): {secret}\n(shown once; only its SHA-256 is stored)",
                role.as_str()
            ))
        }
        CredentialCommand::List { store, json } => {
            let creds = store.open(data_dir)?.credentials()?;
            if json {
                w(print_json(
                    out,
                    &serde_json::json!({ "credentials": creds }),
                ))
            } else {
                w(creds.iter().try_for_each(|c| {
                    writeln!(
                        out,
                        "{:<24} {:<10} created {}",
                        c.name,
                        c.role.as_str(),
                        crate::file_store::rfc3339(c.created_ms)
                    )
                }))
            }
        }
        CredentialCommand::Remove { name, store } => {
            if store.open(data_dir)?.remove_credential(&actor(), &name)? {
                w(writeln!(out, "credential {name} removed"))
            } else {
                Err(PolicyError::Tenant(format!(
                    "name: no credential named {name:?}"
                )))
            }
        }
    }
}

fn check_credential_name(name: &str) -> Result<(), PolicyError> {
    // Same syntax as policy names: it is printed in audit records.
    GroupName::new(name)
        .map(|_| ())
        .map_err(|e| PolicyError::Tenant(format!("name: {e}")))
}

/// Runs `policy serve`: opens the store, reads the credentials and key, resolves the node
/// set (and refreshes it from DNS every 5 s), binds, and hands the listener and the router
/// to `serve_fn` until it returns or ctrl-c. `run_policy` serves with plain `axum::serve`;
/// an embedder with bounded HTTP serving (the `duet-relay` binary: connection cap, header
/// and request timeouts) passes its own.
pub fn serve_with<F, Fut>(a: ServeArgs, data_dir: &Path, serve_fn: F) -> Result<(), PolicyError>
where
    F: FnOnce(tokio::net::TcpListener, axum::Router) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(PolicyError::Output)?;
    let store: Arc<dyn Store> = Arc::from(a.store.open(data_dir)?);
    let admin_token = match &a.admin_token_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|source| store::StoreError::Io {
                op: "read",
                path: p.clone(),
                source,
            })?;
            let t = t.trim().to_owned();
            if t.len() < 16 {
                return Err(PolicyError::Tenant(
                    "admin_token_file: must hold a credential of at least 16 characters".into(),
                ));
            }
            Some(t)
        }
    };
    let key = match &a.signing_key {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| store::StoreError::Io {
                op: "read",
                path: p.clone(),
                source,
            })?;
            let seed = duet_proto::hex::decode(text.trim()).ok_or_else(|| {
                PolicyError::Tenant(format!("signing_key: {} is not hex", p.display()))
            })?;
            Some(duet_proto::SigningKey::ed25519_from_seed(
                a.key_id.clone(),
                &seed,
            )?)
        }
    };
    rt.block_on(async move {
        let nodes = Arc::new(match &a.nodes_from {
            None => NodeSet::none(),
            Some(s) => NodeSet::from_source(NodeSource::parse(s)?).await?,
        });
        // DNS is polled; a static set never changes and a Kubernetes one is watched.
        if matches!(
            nodes.source(),
            NodeSource::DnsSrv { .. } | NodeSource::DnsA { .. }
        ) {
            let n = nodes.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    if let Err(e) = n.refresh().await {
                        tracing::warn!(error = %e, "node set refresh failed; keeping the last set");
                    }
                }
            });
        }
        let cfg = crate::admin_api::ApiConfig {
            store,
            admin_token,
            signing_key: key.map(Arc::new),
            nodes,
            max_ttl: std::time::Duration::from_secs(a.max_ttl_secs),
        };
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(PolicyError::Output)?;
        let addr = listener.local_addr().map_err(PolicyError::Output)?;
        println!(
            "duet policy API on http://{addr}/v1/ (store {})",
            cfg.store.describe()
        );
        let app = crate::admin_api::router_with(cfg);
        tokio::select! {
            r = serve_fn(listener, app) => r.map_err(PolicyError::Output),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// The session's nodes from a `--nodes-from` source (resolving DNS once), for `token mint`.
pub fn resolve_nodes(source: &str, session: &SessionId) -> Result<Vec<NodeId>, PolicyError> {
    let src = NodeSource::parse(source)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PolicyError::Output)?;
    let set = rt.block_on(NodeSet::from_source(src))?;
    Ok(set.candidates(session))
}

/// `--since`: a duration ago (`2h`), a date (`2026-12-01`) or an instant
/// (`2026-12-01T09:30:00Z`, seconds and `Z` optional). Returns Unix ms.
pub fn parse_since(s: &str) -> Result<u64, PolicyError> {
    let bad = || {
        PolicyError::Tenant(format!(
            "--since {s:?}: use a duration ago (2h, 30m), a date (2026-12-01) or an instant \
             (2026-12-01T09:30:00Z)"
        ))
    };
    if let Ok(d) = duet_proto::parse_duration(s) {
        return Ok(store::now_ms().saturating_sub(d.as_millis() as u64));
    }
    let s2 = s.trim_end_matches('Z');
    let (date, time) = s2.split_once('T').unwrap_or((s2, "00:00:00"));
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() < 2 || t.len() > 3 {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hh, mm) = (num(t[0])?, num(t[1])?);
    let ss = if t.len() == 3 { num(t[2])? } else { 0 };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant), the inverse of the audit log's formatter.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).map(|s| s * 1000).map_err(|_| bad())
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
    apply_and_report(&store, data_dir, out, &change)
}

/// Applies one change to the store as the local operator and reports it.
fn apply_and_report(
    store: &StoreArgs,
    data_dir: &Path,
    out: &mut dyn Write,
    change: &Change,
) -> Result<(), PolicyError> {
    let applied = store.open(data_dir)?.apply(&actor(), change)?;
    report(out, change, &applied).map_err(PolicyError::Output)
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

/// `v` as JSON with `--json`, else in its text form.
fn print_as<T: serde::Serialize>(
    out: &mut dyn Write,
    json: bool,
    v: &T,
    text: fn(&mut dyn Write, &T) -> io::Result<()>,
) -> io::Result<()> {
    if json {
        print_json(out, v)
    } else {
        text(out, v)
    }
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn holders(v: &PolicyView) -> String {
    // Name the holders, but keep a line readable when thousands hold the policy.
    const SHOWN: usize = 20;
    let mut parts = Vec::new();
    if !v.users.is_empty() {
        let mut s = format!("users: {}", join(v.users.iter().take(SHOWN)));
        if v.users.len() > SHOWN {
            s.push_str(&format!(", and {} more", v.users.len() - SHOWN));
        }
        parts.push(s);
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

fn write_audit(out: &mut dyn Write, r: &AuditRecord) -> io::Result<()> {
    writeln!(
        out,
        "{} rev {:<6} {:<20} {} (credential {}): {} -> {}",
        r.when, r.revision, r.op, r.actor, r.credential, r.before, r.after
    )
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
    writeln!(
        out,
        "claim:                {} ({})",
        e.claim.as_str(),
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
                applied.after["effective_policy"].as_str().unwrap_or("?")
            ),
        },
        Change::GrantUsers { users, policy } => match policy.as_ref().filter(|p| !p.is_global()) {
            Some(p) => format!("{} users: granted policy {p}", users.len()),
            None => format!("{} users: no direct policy", users.len()),
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
        Change::SetGroupMembers { group, users } => {
            format!("group {group}: {} members", users.len())
        }
    };
    if applied.changed {
        writeln!(out, "{what} (revision {})", applied.revision)
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

    #[test]
    fn since_parses_dates_instants_and_durations() {
        assert_eq!(parse_since("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(
            parse_since("2025-11-23T09:26:40Z").unwrap(),
            1_763_890_000_000
        );
        let ago = parse_since("1h").unwrap();
        assert!(store::now_ms() - ago >= 3_600_000);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2025-13-01").is_err());
    }
}
