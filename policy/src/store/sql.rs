//! The SQL both databases share: the schema, the rules' primitive reads and writes as
//! statements, the audit table, and the [`Store`] implementation over a [`Backend`]
//! (with `forward_store!`, which each backend's store newtype uses to expose it).
//!
//! Owns the schema and every statement; each backend only binds values, runs statements
//! and opens transactions (write transactions take the store's one write lock first:
//! SQLite `BEGIN IMMEDIATE`, PostgreSQL `SELECT … FOR UPDATE` on the meta row). Does not
//! own the rules (`engine`). Statements use `$1…` placeholders, which SQLite reads as
//! numbered parameters, and only TEXT and BIGINT columns (booleans are 0/1).
//!
//! Schema (revision = the audit log's key: every audited change bumps it by one):
//! ```text
//! duet_meta(id=1, format, revision)
//! policies(name PK, calling_e2ee)
//! users(id PK, policy -> policies, e2ee, compliance)      index (policy, id)
//! memberships(user_id, grp) PK (user_id, grp)             index (grp, user_id)
//! group_grants(grp PK, policy -> policies, rank UNIQUE)
//! audit(revision PK, unix_ms, actor, credential, op, operation, before_json, after_json)
//! audit_users(user_id, revision) PK                       (for `audit --user`)
//! api_credentials(name PK, role, secret_sha256 UNIQUE, created_ms)
//! ```
//!
//! Size: ~850 lines: the SQL of one schema, written once for both dialects (SQLite,
//! PostgreSQL); the shared rules are `engine`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use duet_proto::UserId;
use serde_json::{json, Value};

use super::{now_ms, Actor, Applied, AuditQuery, AuditRecord, Credential, Role, Store, StoreError};
use crate::engine::{self, Outcome, Tx};
use crate::model::{
    CallingE2ee, Change, Effective, GroupGrant, GroupGrantView, GroupName, ModelError, PolicyName,
    PolicyState, PolicyView, UserRecord, STATE_FORMAT,
};
use crate::PolicyError;

type R<T> = Result<T, StoreError>;

pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS duet_meta (id BIGINT PRIMARY KEY, format BIGINT NOT NULL, revision BIGINT NOT NULL)",
    "INSERT INTO duet_meta (id, format, revision) VALUES (1, 1, 0) ON CONFLICT (id) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, calling_e2ee TEXT NOT NULL)",
    "INSERT INTO policies (name, calling_e2ee) VALUES ('Global', 'disabled') ON CONFLICT (name) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, policy TEXT REFERENCES policies (name), e2ee BIGINT NOT NULL, compliance BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS users_by_policy ON users (policy, id)",
    "CREATE TABLE IF NOT EXISTS memberships (user_id TEXT NOT NULL, grp TEXT NOT NULL, PRIMARY KEY (user_id, grp))",
    "CREATE INDEX IF NOT EXISTS memberships_by_group ON memberships (grp, user_id)",
    "CREATE TABLE IF NOT EXISTS group_grants (grp TEXT PRIMARY KEY, policy TEXT NOT NULL REFERENCES policies (name), rank BIGINT NOT NULL UNIQUE)",
    "CREATE INDEX IF NOT EXISTS group_grants_by_policy ON group_grants (policy)",
    "CREATE TABLE IF NOT EXISTS audit (revision BIGINT PRIMARY KEY, unix_ms BIGINT NOT NULL, actor TEXT NOT NULL, credential TEXT NOT NULL, op TEXT NOT NULL, operation TEXT NOT NULL, before_json TEXT NOT NULL, after_json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit (unix_ms)",
    "CREATE TABLE IF NOT EXISTS audit_users (user_id TEXT NOT NULL, revision BIGINT NOT NULL, PRIMARY KEY (user_id, revision))",
    "CREATE TABLE IF NOT EXISTS api_credentials (name TEXT PRIMARY KEY, role TEXT NOT NULL, secret_sha256 TEXT NOT NULL UNIQUE, created_ms BIGINT NOT NULL)",
];

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum P<'a> {
    I(i64),
    T(&'a str),
    Null,
}

/// A column value read back.
#[derive(Debug, Clone)]
pub(crate) enum V {
    I(i64),
    T(String),
    Null,
}

impl V {
    fn int(&self, what: &str) -> R<i64> {
        match self {
            V::I(i) => Ok(*i),
            _ => Err(corrupt(format!("{what} is not an integer"))),
        }
    }
    fn text(self, what: &str) -> R<String> {
        match self {
            V::T(s) => Ok(s),
            _ => Err(corrupt(format!("{what} is not text"))),
        }
    }
    fn opt_text(self, what: &str) -> R<Option<String>> {
        match self {
            V::Null => Ok(None),
            other => other.text(what).map(Some),
        }
    }
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        location: "database".into(),
        detail,
    }
}

/// One open transaction of a backend.
pub(crate) trait Sql {
    fn exec(&mut self, sql: &'static str, params: &[P<'_>]) -> R<u64>;
    fn query(&mut self, sql: &'static str, params: &[P<'_>]) -> R<Vec<Vec<V>>>;
}

/// What a database provides: connections and transactions.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    type Conn: Send;
    fn describe(&self) -> String;
    fn connect(&self) -> R<Self::Conn>;
    /// Runs `f` in one transaction (a write transaction holds the write lock from its
    /// start), committing if it returns `Ok`, rolling back otherwise.
    fn transact<T>(
        &self,
        conn: &mut Self::Conn,
        write: bool,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, PolicyError>,
    ) -> Result<T, PolicyError>;
    /// Whether changes are refused up front (a read-only SQLite file).
    fn read_only(&self) -> bool {
        false
    }
}

/// A store over a backend, with a small pool of connections (one per concurrent caller,
/// kept for reuse).
pub(crate) struct SqlStore<B: Backend> {
    pub(crate) backend: B,
    pool: Mutex<Vec<B::Conn>>,
}

impl<B: Backend> std::fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .finish()
    }
}

const POOL_KEEP: usize = 16;

impl<B: Backend> SqlStore<B> {
    pub(crate) fn new(backend: B, first: B::Conn) -> Self {
        Self {
            backend,
            pool: Mutex::new(vec![first]),
        }
    }

    /// A write transaction for fixtures (no rules, no audit).
    pub(crate) fn with_write<T>(
        &self,
        f: impl FnMut(&mut dyn Sql) -> Result<T, PolicyError>,
    ) -> Result<T, PolicyError> {
        self.with(true, f)
    }

    fn with<T>(
        &self,
        write: bool,
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, PolicyError>,
    ) -> Result<T, PolicyError> {
        if write && self.backend.read_only() {
            return Err(StoreError::ReadOnly {
                location: self.backend.describe(),
            }
            .into());
        }
        let taken = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut conn = match taken {
            Some(c) => c,
            None => self.backend.connect()?,
        };
        let r = self.backend.transact(&mut conn, write, &mut f);
        // A connection whose transaction failed at the database level may be broken
        // (a dropped PostgreSQL session): only reuse it after a success or a refusal.
        let reusable = !matches!(r, Err(PolicyError::Store(_)));
        if reusable {
            if let Ok(mut p) = self.pool.lock() {
                if p.len() < POOL_KEEP {
                    p.push(conn);
                }
            }
        }
        r
    }
}

fn b(v: bool) -> i64 {
    i64::from(v)
}

fn parse_setting(s: &str) -> R<CallingE2ee> {
    match s {
        "disabled" => Ok(CallingE2ee::Disabled),
        "disabled-user-override" => Ok(CallingE2ee::DisabledUserOverride),
        "required" => Ok(CallingE2ee::Required),
        other => Err(corrupt(format!("unknown calling_e2ee {other:?}"))),
    }
}

fn policy_name(s: String) -> R<PolicyName> {
    PolicyName::new(s).map_err(|e| corrupt(e.to_string()))
}
fn group_name(s: String) -> R<GroupName> {
    GroupName::new(s).map_err(|e| corrupt(e.to_string()))
}
fn user_id(s: String) -> R<UserId> {
    UserId::new(s).map_err(|e| corrupt(e.to_string()))
}
fn rank(i: i64) -> R<u32> {
    u32::try_from(i).map_err(|_| corrupt(format!("rank {i} out of range")))
}

/// The engine's primitives as statements.
pub(crate) struct SqlTx<'a>(pub(crate) &'a mut dyn Sql);

impl SqlTx<'_> {
    /// Runs a statement whose one parameter is a key (a delete by name).
    fn exec_key(&mut self, sql: &'static str, key: &str) -> R<()> {
        self.0.exec(sql, &[P::T(key)])?;
        Ok(())
    }
    /// The user ids in column `col` of a query whose one parameter is a key.
    fn user_ids(&mut self, sql: &'static str, key: &str, col: &str) -> R<Vec<UserId>> {
        let rows = self.0.query(sql, &[P::T(key)])?;
        rows.into_iter()
            .map(|r| user_id(r.into_iter().next().unwrap_or(V::Null).text(col)?))
            .collect()
    }
}

impl Tx for SqlTx<'_> {
    fn revision(&mut self) -> R<u64> {
        let rows = self
            .0
            .query("SELECT revision FROM duet_meta WHERE id = 1", &[])?;
        let v = rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .ok_or_else(|| corrupt("the meta row is missing".into()))?;
        Ok(v.int("revision")? as u64)
    }
    fn set_revision(&mut self, rev: u64) -> R<()> {
        self.0.exec(
            "UPDATE duet_meta SET revision = $1 WHERE id = 1",
            &[P::I(rev as i64)],
        )?;
        Ok(())
    }
    fn policy(&mut self, name: &PolicyName) -> R<Option<CallingE2ee>> {
        let rows = self.0.query(
            "SELECT calling_e2ee FROM policies WHERE name = $1",
            &[P::T(name.as_str())],
        )?;
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(v) => Ok(Some(parse_setting(&v.text("calling_e2ee")?)?)),
            None => Ok(None),
        }
    }
    fn policies(&mut self) -> R<Vec<(PolicyName, CallingE2ee)>> {
        let rows = self
            .0
            .query("SELECT name, calling_e2ee FROM policies ORDER BY name", &[])?;
        rows.into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                let n = it.next().unwrap_or(V::Null).text("name")?;
                let c = it.next().unwrap_or(V::Null).text("calling_e2ee")?;
                Ok((policy_name(n)?, parse_setting(&c)?))
            })
            .collect()
    }
    fn put_policy(&mut self, name: &PolicyName, setting: CallingE2ee) -> R<()> {
        self.0.exec(
            "INSERT INTO policies (name, calling_e2ee) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET calling_e2ee = excluded.calling_e2ee",
            &[P::T(name.as_str()), P::T(setting.as_str())],
        )?;
        Ok(())
    }
    fn delete_policy(&mut self, name: &PolicyName) -> R<()> {
        self.exec_key("DELETE FROM policies WHERE name = $1", name.as_str())
    }
    fn policy_users(&mut self, name: &PolicyName) -> R<Vec<UserId>> {
        self.user_ids(
            "SELECT id FROM users WHERE policy = $1 ORDER BY id",
            name.as_str(),
            "id",
        )
    }
    fn policy_grants(&mut self, name: &PolicyName) -> R<Vec<GroupGrantView>> {
        let rows = self.0.query(
            "SELECT grp, rank FROM group_grants WHERE policy = $1 ORDER BY rank",
            &[P::T(name.as_str())],
        )?;
        rows.into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                let g = it.next().unwrap_or(V::Null).text("grp")?;
                let k = it.next().unwrap_or(V::Null).int("rank")?;
                Ok(GroupGrantView {
                    group: group_name(g)?,
                    rank: rank(k)?,
                })
            })
            .collect()
    }
    fn user(&mut self, user: &UserId) -> R<Option<UserRecord>> {
        let rows = self.0.query(
            "SELECT policy, e2ee, compliance FROM users WHERE id = $1",
            &[P::T(user.as_str())],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut it = row.into_iter();
        let policy = it
            .next()
            .unwrap_or(V::Null)
            .opt_text("policy")?
            .map(policy_name)
            .transpose()?;
        let e2ee = it.next().unwrap_or(V::Null).int("e2ee")? != 0;
        let compliance = it.next().unwrap_or(V::Null).int("compliance")? != 0;
        let groups = self
            .0
            .query(
                "SELECT grp FROM memberships WHERE user_id = $1 ORDER BY grp",
                &[P::T(user.as_str())],
            )?
            .into_iter()
            .map(|r| group_name(r.into_iter().next().unwrap_or(V::Null).text("grp")?))
            .collect::<R<BTreeSet<_>>>()?;
        Ok(Some(UserRecord {
            policy,
            e2ee,
            compliance_recording: compliance,
            groups,
        }))
    }
    fn put_user(&mut self, user: &UserId, old: Option<&UserRecord>, rec: &UserRecord) -> R<()> {
        self.0.exec(
            "INSERT INTO users (id, policy, e2ee, compliance) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, e2ee = excluded.e2ee, \
             compliance = excluded.compliance",
            &[
                P::T(user.as_str()),
                rec.policy.as_ref().map_or(P::Null, |p| P::T(p.as_str())),
                P::I(b(rec.e2ee)),
                P::I(b(rec.compliance_recording)),
            ],
        )?;
        let empty = BTreeSet::new();
        let had = old.map_or(&empty, |o| &o.groups);
        for g in had.difference(&rec.groups) {
            self.0.exec(
                "DELETE FROM memberships WHERE user_id = $1 AND grp = $2",
                &[P::T(user.as_str()), P::T(g.as_str())],
            )?;
        }
        for g in rec.groups.difference(had) {
            self.0.exec(
                "INSERT INTO memberships (user_id, grp) VALUES ($1, $2)",
                &[P::T(user.as_str()), P::T(g.as_str())],
            )?;
        }
        Ok(())
    }
    fn delete_user(&mut self, user: &UserId) -> R<()> {
        self.0.exec(
            "DELETE FROM memberships WHERE user_id = $1",
            &[P::T(user.as_str())],
        )?;
        self.0
            .exec("DELETE FROM users WHERE id = $1", &[P::T(user.as_str())])?;
        Ok(())
    }
    fn grant(&mut self, group: &GroupName) -> R<Option<GroupGrant>> {
        let rows = self.0.query(
            "SELECT policy, rank FROM group_grants WHERE grp = $1",
            &[P::T(group.as_str())],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut it = row.into_iter();
        let p = it.next().unwrap_or(V::Null).text("policy")?;
        let k = it.next().unwrap_or(V::Null).int("rank")?;
        Ok(Some(GroupGrant {
            policy: policy_name(p)?,
            rank: rank(k)?,
        }))
    }
    fn group_with_rank(&mut self, r: u32) -> R<Option<GroupName>> {
        let rows = self.0.query(
            "SELECT grp FROM group_grants WHERE rank = $1",
            &[P::I(i64::from(r))],
        )?;
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(v) => Ok(Some(group_name(v.text("grp")?)?)),
            None => Ok(None),
        }
    }
    fn put_grant(&mut self, group: &GroupName, grant: &GroupGrant) -> R<()> {
        self.0.exec(
            "INSERT INTO group_grants (grp, policy, rank) VALUES ($1, $2, $3) \
             ON CONFLICT (grp) DO UPDATE SET policy = excluded.policy, rank = excluded.rank",
            &[
                P::T(group.as_str()),
                P::T(grant.policy.as_str()),
                P::I(i64::from(grant.rank)),
            ],
        )?;
        Ok(())
    }
    fn delete_grant(&mut self, group: &GroupName) -> R<()> {
        self.exec_key("DELETE FROM group_grants WHERE grp = $1", group.as_str())
    }
    fn group_members(&mut self, group: &GroupName) -> R<Vec<UserId>> {
        self.user_ids(
            "SELECT user_id FROM memberships WHERE grp = $1 ORDER BY user_id",
            group.as_str(),
            "user_id",
        )
    }
    fn best_grant(
        &mut self,
        user: &UserId,
        rec: &UserRecord,
    ) -> R<Option<(GroupName, GroupGrant)>> {
        if rec.groups.is_empty() {
            return Ok(None);
        }
        let rows = self.0.query(
            "SELECT g.grp, g.policy, g.rank FROM memberships m \
             JOIN group_grants g ON g.grp = m.grp WHERE m.user_id = $1 \
             ORDER BY g.rank LIMIT 1",
            &[P::T(user.as_str())],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut it = row.into_iter();
        let g = it.next().unwrap_or(V::Null).text("grp")?;
        let p = it.next().unwrap_or(V::Null).text("policy")?;
        let k = it.next().unwrap_or(V::Null).int("rank")?;
        Ok(Some((
            group_name(g)?,
            GroupGrant {
                policy: policy_name(p)?,
                rank: rank(k)?,
            },
        )))
    }
}

fn to_json(v: &impl serde::Serialize) -> R<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Database {
        backend: "json",
        detail: e.to_string(),
    })
}

/// Writes one audit record (and its per-user index rows) in the current transaction.
#[allow(clippy::too_many_arguments)]
fn write_audit(
    sql: &mut dyn Sql,
    actor: &Actor,
    revision: u64,
    op: &str,
    operation: &Value,
    before: &Value,
    after: &Value,
    users: &[UserId],
) -> R<()> {
    sql.exec(
        "INSERT INTO audit (revision, unix_ms, actor, credential, op, operation, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            P::I(revision as i64),
            P::I(now_ms() as i64),
            P::T(&actor.who),
            P::T(&actor.credential),
            P::T(op),
            P::T(&to_json(operation)?),
            P::T(&to_json(before)?),
            P::T(&to_json(after)?),
        ],
    )?;
    for u in users {
        sql.exec(
            "INSERT INTO audit_users (user_id, revision) VALUES ($1, $2)",
            &[P::T(u.as_str()), P::I(revision as i64)],
        )?;
    }
    Ok(())
}

fn apply_in(sql: &mut dyn Sql, actor: &Actor, change: &Change) -> Result<Applied, PolicyError> {
    let out = engine::apply(&mut SqlTx(sql), change)?;
    match out {
        None => {
            let mut tx = SqlTx(sql);
            Ok(Applied {
                changed: false,
                revision: tx.revision()?,
                after: engine::subject(&mut tx, change)?,
            })
        }
        Some(Outcome {
            revision,
            before,
            after,
            users,
        }) => {
            let operation = serde_json::to_value(change).unwrap_or_default();
            write_audit(
                sql,
                actor,
                revision,
                change.op(),
                &operation,
                &before,
                &after,
                &users,
            )?;
            Ok(Applied {
                changed: true,
                revision,
                after,
            })
        }
    }
}

/// Bumps the revision for a change the engine does not make (import, credentials).
fn bump(sql: &mut dyn Sql) -> R<u64> {
    let mut tx = SqlTx(sql);
    let rev = tx.revision()? + 1;
    tx.set_revision(rev)?;
    Ok(rev)
}

fn audit_row(row: Vec<V>) -> R<AuditRecord> {
    let mut it = row.into_iter();
    let mut next = || it.next().unwrap_or(V::Null);
    let revision = next().int("revision")? as u64;
    let unix_ms = next().int("unix_ms")? as u64;
    let actor = next().text("actor")?;
    let credential = next().text("credential")?;
    let op = next().text("op")?;
    let parse = |s: String| serde_json::from_str(&s).unwrap_or(Value::Null);
    let operation = parse(next().text("operation")?);
    let before = parse(next().text("before_json")?);
    let after = parse(next().text("after_json")?);
    Ok(AuditRecord {
        revision,
        when: crate::file_store::rfc3339(unix_ms),
        unix_ms,
        actor,
        credential,
        op,
        operation,
        before,
        after,
    })
}

fn cred_row(row: Vec<V>) -> R<Credential> {
    let mut it = row.into_iter();
    let name = it.next().unwrap_or(V::Null).text("name")?;
    let role = it.next().unwrap_or(V::Null).text("role")?;
    let created_ms = it.next().unwrap_or(V::Null).int("created_ms")? as u64;
    Ok(Credential {
        name,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}")))?,
        created_ms,
    })
}

impl<B: Backend> Store for SqlStore<B> {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn apply(&self, actor: &Actor, change: &Change) -> Result<Applied, PolicyError> {
        self.with(true, |sql| apply_in(sql, actor, change))
    }

    fn apply_all(&self, actor: &Actor, changes: &[Change]) -> Result<Vec<Applied>, PolicyError> {
        self.with(true, |sql| {
            changes.iter().map(|c| apply_in(sql, actor, c)).collect()
        })
    }

    fn effective(&self, user: &UserId) -> Result<Effective, PolicyError> {
        self.with(false, |sql| Ok(engine::effective(&mut SqlTx(sql), user)?))
    }

    fn user(&self, user: &UserId) -> Result<UserRecord, PolicyError> {
        self.with(false, |sql| Ok(SqlTx(sql).user(user)?.unwrap_or_default()))
    }

    fn view(&self, name: &PolicyName) -> Result<PolicyView, PolicyError> {
        self.with(false, |sql| engine::view(&mut SqlTx(sql), name))
    }

    fn list(&self) -> Result<Vec<PolicyView>, PolicyError> {
        self.with(false, |sql| engine::list(&mut SqlTx(sql)))
    }

    fn revision(&self) -> Result<u64, PolicyError> {
        self.with(false, |sql| Ok(SqlTx(sql).revision()?))
    }

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, PolicyError> {
        let limit = if q.limit == 0 { 100 } else { q.limit } as i64;
        let since = q.since_ms.unwrap_or(0) as i64;
        self.with(false, |sql| {
            let rows = match &q.user {
                Some(u) => sql.query(
                    "SELECT a.revision, a.unix_ms, a.actor, a.credential, a.op, a.operation, \
                     a.before_json, a.after_json FROM audit_users x \
                     JOIN audit a ON a.revision = x.revision \
                     WHERE x.user_id = $1 AND a.unix_ms >= $2 ORDER BY a.revision DESC LIMIT $3",
                    &[P::T(u.as_str()), P::I(since), P::I(limit)],
                )?,
                None => sql.query(
                    "SELECT revision, unix_ms, actor, credential, op, operation, before_json, \
                     after_json FROM audit WHERE unix_ms >= $1 ORDER BY revision DESC LIMIT $2",
                    &[P::I(since), P::I(limit)],
                )?,
            };
            Ok(rows.into_iter().map(audit_row).collect::<R<Vec<_>>>()?)
        })
    }

    fn export(&self) -> Result<PolicyState, PolicyError> {
        self.with(false, |sql| {
            let mut tx = SqlTx(sql);
            let revision = tx.revision()?;
            let policies: BTreeMap<_, _> = tx.policies()?.into_iter().collect();
            let mut users: BTreeMap<UserId, UserRecord> = BTreeMap::new();
            for r in sql.query("SELECT id, policy, e2ee, compliance FROM users", &[])? {
                let mut it = r.into_iter();
                let id = user_id(it.next().unwrap_or(V::Null).text("id")?)?;
                let policy = it
                    .next()
                    .unwrap_or(V::Null)
                    .opt_text("policy")?
                    .map(policy_name)
                    .transpose()?;
                let e2ee = it.next().unwrap_or(V::Null).int("e2ee")? != 0;
                let compliance = it.next().unwrap_or(V::Null).int("compliance")? != 0;
                users.insert(
                    id,
                    UserRecord {
                        policy,
                        e2ee,
                        compliance_recording: compliance,
                        groups: BTreeSet::new(),
                    },
                );
            }
            for r in sql.query("SELECT user_id, grp FROM memberships", &[])? {
                let mut it = r.into_iter();
                let id = user_id(it.next().unwrap_or(V::Null).text("user_id")?)?;
                let g = group_name(it.next().unwrap_or(V::Null).text("grp")?)?;
                users.entry(id).or_default().groups.insert(g);
            }
            let mut groups = BTreeMap::new();
            for r in sql.query("SELECT grp, policy, rank FROM group_grants", &[])? {
                let mut it = r.into_iter();
                let g = group_name(it.next().unwrap_or(V::Null).text("grp")?)?;
                let p = policy_name(it.next().unwrap_or(V::Null).text("policy")?)?;
                let k = rank(it.next().unwrap_or(V::Null).int("rank")?)?;
                groups.insert(g, GroupGrant { policy: p, rank: k });
            }
            Ok(PolicyState::from_parts(revision, policies, users, groups))
        })
    }

    fn import(&self, actor: &Actor, state: &PolicyState) -> Result<Applied, PolicyError> {
        state
            .validate()
            .map_err(|detail| PolicyError::Model(ModelError::InvalidImport(detail)))?;
        if state.format != STATE_FORMAT {
            return Err(ModelError::InvalidImport(format!("format {}", state.format)).into());
        }
        self.with(true, |sql| {
            let before = json!({ "revision": SqlTx(sql).revision()? });
            for stmt in [
                "DELETE FROM memberships",
                "DELETE FROM users",
                "DELETE FROM group_grants",
                "DELETE FROM policies",
            ] {
                sql.exec(stmt, &[])?;
            }
            for (name, setting) in state.policies() {
                SqlTx(sql).put_policy(name, *setting)?;
            }
            for (group, grant) in state.group_grants() {
                SqlTx(sql).put_grant(group, grant)?;
            }
            let mut n = 0usize;
            for (user, rec) in state.users() {
                if !rec.is_default() {
                    SqlTx(sql).put_user(user, None, rec)?;
                    n += 1;
                }
            }
            let revision = bump(sql)?;
            let after = json!({
                "policies": state.policies().count(),
                "group_grants": state.group_grants().count(),
                "users": n,
                "imported_revision": state.revision,
            });
            write_audit(
                sql,
                actor,
                revision,
                "import",
                &json!({ "op": "import" }),
                &before,
                &after,
                &[],
            )?;
            Ok(Applied {
                changed: true,
                revision,
                after,
            })
        })
    }

    fn put_credential(
        &self,
        actor: &Actor,
        cred: &Credential,
        secret_sha256: &str,
    ) -> Result<(), PolicyError> {
        self.with(true, |sql| {
            sql.exec(
                "INSERT INTO api_credentials (name, role, secret_sha256, created_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role, \
                 secret_sha256 = excluded.secret_sha256, created_ms = excluded.created_ms",
                &[
                    P::T(&cred.name),
                    P::T(cred.role.as_str()),
                    P::T(secret_sha256),
                    P::I(cred.created_ms as i64),
                ],
            )?;
            let revision = bump(sql)?;
            // Never the secret or its hash.
            let op = json!({ "op": "put_credential", "name": cred.name, "role": cred.role });
            write_audit(sql, actor, revision, "put_credential", &op, &Value::Null, &op, &[])?;
            Ok(())
        })
    }

    fn remove_credential(&self, actor: &Actor, name: &str) -> Result<bool, PolicyError> {
        self.with(true, |sql| {
            let n = sql.exec("DELETE FROM api_credentials WHERE name = $1", &[P::T(name)])?;
            if n == 0 {
                return Ok(false);
            }
            let revision = bump(sql)?;
            let op = json!({ "op": "remove_credential", "name": name });
            write_audit(
                sql,
                actor,
                revision,
                "remove_credential",
                &op,
                &op,
                &Value::Null,
                &[],
            )?;
            Ok(true)
        })
    }

    fn credentials(&self) -> Result<Vec<Credential>, PolicyError> {
        self.with(false, |sql| {
            let rows = sql.query(
                "SELECT name, role, created_ms FROM api_credentials ORDER BY name",
                &[],
            )?;
            Ok(rows.into_iter().map(cred_row).collect::<R<Vec<_>>>()?)
        })
    }

    fn credential_by_secret(&self, secret_sha256: &str) -> Result<Option<Credential>, PolicyError> {
        self.with(false, |sql| {
            let rows = sql.query(
                "SELECT name, role, created_ms FROM api_credentials WHERE secret_sha256 = $1",
                &[P::T(secret_sha256)],
            )?;
            Ok(rows.into_iter().next().map(cred_row).transpose()?)
        })
    }
}

/// `impl Store for $store` by forwarding every method to its `SqlStore` field `.0`: each
/// database's store is a newtype over the shared one (so its constructors and clean-up stay
/// in its own module), and the forwarding is written once here.
macro_rules! forward_store {
    ($store:ty) => {
        impl $crate::store::Store for $store {
            $crate::store::sql::forward_store!(@fns
                describe() -> String;
                apply(actor: &$crate::store::Actor, change: &$crate::model::Change)
                    -> Result<$crate::store::Applied, $crate::PolicyError>;
                apply_all(actor: &$crate::store::Actor, changes: &[$crate::model::Change])
                    -> Result<Vec<$crate::store::Applied>, $crate::PolicyError>;
                effective(user: &::duet_proto::UserId)
                    -> Result<$crate::model::Effective, $crate::PolicyError>;
                user(user: &::duet_proto::UserId)
                    -> Result<$crate::model::UserRecord, $crate::PolicyError>;
                view(name: &$crate::model::PolicyName)
                    -> Result<$crate::model::PolicyView, $crate::PolicyError>;
                list() -> Result<Vec<$crate::model::PolicyView>, $crate::PolicyError>;
                revision() -> Result<u64, $crate::PolicyError>;
                audit(query: &$crate::store::AuditQuery)
                    -> Result<Vec<$crate::store::AuditRecord>, $crate::PolicyError>;
                export() -> Result<$crate::model::PolicyState, $crate::PolicyError>;
                import(actor: &$crate::store::Actor, state: &$crate::model::PolicyState)
                    -> Result<$crate::store::Applied, $crate::PolicyError>;
                put_credential(
                    actor: &$crate::store::Actor,
                    cred: &$crate::store::Credential,
                    secret_sha256: &str
                ) -> Result<(), $crate::PolicyError>;
                remove_credential(actor: &$crate::store::Actor, name: &str)
                    -> Result<bool, $crate::PolicyError>;
                credentials() -> Result<Vec<$crate::store::Credential>, $crate::PolicyError>;
                credential_by_secret(secret_sha256: &str)
                    -> Result<Option<$crate::store::Credential>, $crate::PolicyError>;
            );
        }
    };
    (@fns $($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret {
            $crate::store::Store::$name(&self.0, $($arg),*)
        })*
    };
}
pub(crate) use forward_store;
