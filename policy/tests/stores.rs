//! One test suite, two databases: every behaviour of the store is a generic function run
//! once against SQLite (a file in a temp dir) and once against a real PostgreSQL server
//! (`DUET_TEST_POSTGRES`, started by `.ci/postgres.sh`; each test in its own schema).
//! Under CI a missing server fails the PostgreSQL half; locally it is skipped with a
//! notice.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use duet_policy::model::MAX_GROUPS_PER_USER;
use duet_policy::store::{secret_sha256, test_postgres_dsn};
use duet_policy::tenant::Tenant;
use duet_policy::{
    Actor, AuditQuery, CallingE2ee, Change, Credential, GroupName, Issuer, ModelError, NodeSet,
    PolicyError, PolicyName, PolicyStore, Role, Source, SqliteStore, Store, GLOBAL,
};
use duet_proto::{DeviceId, E2eeClaim, SessionId, SigningKey, TokenKeyring, UserId};

/// Opens (more handles on) one fresh store.
trait Fixture: Send + Sync {
    fn open(&self) -> Box<dyn Store>;
}

struct SqliteFx(tempfile::TempDir);
impl Fixture for SqliteFx {
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(self.0.path().join("policy.db")).expect("open sqlite"))
    }
}

struct PgFx {
    dsn: String,
    schema: String,
}
impl Fixture for PgFx {
    fn open(&self) -> Box<dyn Store> {
        Box::new(
            duet_policy::PostgresStore::open_in_schema(&self.dsn, Some(&self.schema))
                .expect("open postgres"),
        )
    }
}
impl Drop for PgFx {
    fn drop(&mut self) {
        if let Ok(s) = duet_policy::PostgresStore::open_in_schema(&self.dsn, Some(&self.schema)) {
            let _ = s.drop_schema();
        }
    }
}

static N: AtomicU32 = AtomicU32::new(0);

fn sqlite_fx() -> Arc<dyn Fixture> {
    Arc::new(SqliteFx(tempfile::tempdir().expect("tempdir")))
}

fn pg_fx() -> Option<Arc<dyn Fixture>> {
    let dsn = test_postgres_dsn()?;
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    Some(Arc::new(PgFx { dsn, schema }))
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> anyhow::Result<()> {
                super::$name(super::sqlite_fx())
            }
            #[test]
            fn postgres() -> anyhow::Result<()> {
                match super::pg_fx() {
                    Some(fx) => super::$name(fx),
                    None => Ok(()),
                }
            }
        }
    )*};
}

on_both_stores!(
    the_model_through_the_store,
    every_change_is_audited_once_with_its_credential,
    a_refused_change_changes_nothing_and_logs_nothing,
    a_batch_refused_half_way_is_not_half_applied,
    concurrent_writers_lose_no_update,
    batch_assignment_and_group_sync,
    import_export_roundtrip_from_the_file_store,
    audit_query_by_user_and_time,
    credentials_are_named_with_roles_and_hashed,
    tenant_apply_is_idempotent_and_all_or_nothing,
    required_is_in_the_token_whatever_the_switch,
);

fn u(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}
fn p(s: &str) -> PolicyName {
    PolicyName::new(s).expect("policy name")
}
fn g(s: &str) -> GroupName {
    GroupName::new(s).expect("group name")
}
fn actor() -> Actor {
    Actor::new("test:suite", "test-cred")
}
fn set(name: &str, c: CallingE2ee) -> Change {
    Change::SetPolicy {
        name: p(name),
        calling_e2ee: c,
    }
}
fn switch(user: &str, on: bool) -> Change {
    Change::SetUserE2ee { user: u(user), on }
}
fn grant_group(group: &str, policy: &str, rank: u32) -> Change {
    Change::GrantGroup {
        group: g(group),
        policy: Some(p(policy)),
        rank: Some(rank),
    }
}

fn the_model_through_the_store(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    let a = actor();
    assert_eq!(s.revision()?, 0);
    let views = s.list()?;
    assert_eq!(views.len(), 1);
    assert!(views[0].global && views[0].calling_e2ee == CallingE2ee::Disabled);
    assert_eq!(s.effective(&u("alice"))?.claim, E2eeClaim::PolicyDisabled);

    s.apply(&a, &set(GLOBAL, CallingE2ee::DisabledUserOverride))?;
    s.apply(&a, &set("Open", CallingE2ee::DisabledUserOverride))?;
    s.apply(&a, &set("Closed", CallingE2ee::Disabled))?;
    s.apply(&a, &grant_group("sales", "Closed", 2))?;
    s.apply(&a, &grant_group("eng", "Open", 1))?;
    s.apply(
        &a,
        &Change::SetUserGroups {
            user: u("carol"),
            groups: [g("sales"), g("eng")].into(),
        },
    )?;
    s.apply(&a, &switch("carol", true))?;
    let e = s.effective(&u("carol"))?;
    assert_eq!(e.policy, p("Open"));
    assert_eq!(
        e.source,
        Source::Group {
            group: g("eng"),
            rank: 1
        }
    );
    assert_eq!(e.claim, E2eeClaim::Allowed);
    // Ranks are unique.
    match s.apply(&a, &grant_group("sales", "Closed", 1)) {
        Err(PolicyError::Model(ModelError::RankTaken { rank: 1, group })) => {
            assert_eq!(group, "eng")
        }
        other => panic!("expected RankTaken, got {other:?}"),
    }
    // Direct beats groups; unassigning returns to the groups.
    s.apply(
        &a,
        &Change::GrantUser {
            user: u("carol"),
            policy: Some(p("Closed")),
        },
    )?;
    assert_eq!(s.effective(&u("carol"))?.source, Source::Direct);
    assert_eq!(s.effective(&u("carol"))?.claim, E2eeClaim::PolicyDisabled);
    s.apply(
        &a,
        &Change::GrantUser {
            user: u("carol"),
            policy: None,
        },
    )?;
    assert_eq!(s.effective(&u("carol"))?.policy, p("Open"));
    // Compliance recording beats everything.
    s.apply(
        &a,
        &Change::SetComplianceRecording {
            user: u("carol"),
            on: true,
        },
    )?;
    assert_eq!(
        s.effective(&u("carol"))?.claim,
        E2eeClaim::ComplianceRecording
    );
    // A policy in use is not removed silently; with unassign its holders inherit.
    let err = s
        .apply(
            &a,
            &Change::RemovePolicy {
                name: p("Open"),
                unassign: false,
            },
        )
        .expect_err("in use");
    assert!(err.to_string().contains("1 group (eng)"), "{err}");
    s.apply(
        &a,
        &Change::RemovePolicy {
            name: p("Open"),
            unassign: true,
        },
    )?;
    assert_eq!(s.effective(&u("carol"))?.policy, p("Closed"));
    // No-ops are not written.
    let rev = s.revision()?;
    assert!(!s.apply(&a, &switch("carol", true))?.changed);
    assert_eq!(s.revision()?, rev);
    // A user back to the default record is not stored.
    s.apply(
        &a,
        &Change::SetUserGroups {
            user: u("carol"),
            groups: BTreeSet::new(),
        },
    )?;
    s.apply(&a, &switch("carol", false))?;
    s.apply(
        &a,
        &Change::SetComplianceRecording {
            user: u("carol"),
            on: false,
        },
    )?;
    assert_eq!(s.export()?.users().count(), 0);
    Ok(())
}

fn every_change_is_audited_once_with_its_credential(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    s.apply(&actor(), &set(GLOBAL, CallingE2ee::DisabledUserOverride))?;
    s.apply(&Actor::new("api:jane", "portal"), &switch("alice", true))?;
    s.apply(&actor(), &switch("alice", true))?; // no-op
    let log = s.audit(&AuditQuery {
        limit: 100,
        ..Default::default()
    })?;
    assert_eq!(log.len(), 2);
    // Newest first.
    assert_eq!(log[0].revision, 2);
    assert_eq!(log[0].op, "set_user_e2ee");
    assert_eq!(
        (log[0].actor.as_str(), log[0].credential.as_str()),
        ("api:jane", "portal")
    );
    assert_eq!(log[0].before["claim"], "user_not_enabled");
    assert_eq!(log[0].after["claim"], "allowed");
    assert_eq!(log[1].op, "set_policy");
    assert_eq!(log[1].credential, "test-cred");
    assert_eq!(log[1].before["calling_e2ee"], "disabled");
    assert_eq!(log[1].after["calling_e2ee"], "disabled-user-override");
    // A second handle (another process, another instance) sees the same log.
    assert_eq!(fx.open().audit(&AuditQuery::default())?.len(), 2);
    Ok(())
}

fn a_refused_change_changes_nothing_and_logs_nothing(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    for bad in [
        Change::RemovePolicy {
            name: PolicyName::global(),
            unassign: true,
        },
        Change::GrantUser {
            user: u("a"),
            policy: Some(p("Nope")),
        },
        grant_group("eng", "Nope", 1),
        Change::GrantGroup {
            group: g("eng"),
            policy: Some(PolicyName::global()),
            rank: Some(0),
        },
    ] {
        assert!(matches!(
            s.apply(&actor(), &bad),
            Err(PolicyError::Model(_))
        ));
    }
    assert_eq!(s.revision()?, 0);
    assert!(s.audit(&AuditQuery::default())?.is_empty());
    Ok(())
}

/// A directory sync that would put one user over the groups-per-user bound is refused as
/// a whole: the members added before that user are rolled back and no audit record is
/// written (the old file store had no bound at all, and a store without transactions
/// would have kept the first half).
fn a_batch_refused_half_way_is_not_half_applied(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    let full: BTreeSet<GroupName> = (0..MAX_GROUPS_PER_USER)
        .map(|i| g(&format!("g{i}")))
        .collect();
    s.apply(
        &actor(),
        &Change::SetUserGroups {
            user: u("m-full"),
            groups: full.clone(),
        },
    )?;
    // One more is over the bound, with the field named.
    let mut over = full;
    over.insert(g("one-more"));
    let err = s
        .apply(
            &actor(),
            &Change::SetUserGroups {
                user: u("m-full"),
                groups: over,
            },
        )
        .expect_err("over the bound");
    assert!(err.to_string().contains("groups"), "{err}");
    let rev = s.revision()?;
    // Sorted ids: m-a and m-b are added before m-full is reached.
    let err = s
        .apply(
            &actor(),
            &Change::SetGroupMembers {
                group: g("new-group"),
                users: vec![u("m-a"), u("m-b"), u("m-full"), u("m-z")],
            },
        )
        .expect_err("m-full is at the bound");
    assert!(
        matches!(err, PolicyError::Model(ModelError::TooManyGroups { ref user, .. }) if user == "m-full"),
        "{err}"
    );
    assert_eq!(s.revision()?, rev, "nothing committed");
    assert!(
        s.user(&u("m-a"))?.groups.is_empty(),
        "m-a's join rolled back"
    );
    assert_eq!(s.audit(&AuditQuery::default())?.len() as u64, rev);
    Ok(())
}

fn concurrent_writers_lose_no_update(fx: Arc<dyn Fixture>) -> Result<()> {
    const THREADS: usize = 4;
    const PER: usize = 20;
    fx.open()
        .apply(&actor(), &set("Pilot", CallingE2ee::DisabledUserOverride))?;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let fx = fx.clone();
            std::thread::spawn(move || -> Result<()> {
                // Each thread has its own handle: they contend as processes do.
                let s = fx.open();
                for i in 0..PER {
                    s.apply(
                        &Actor::new(format!("thread-{t}"), "t"),
                        &Change::GrantUser {
                            user: u(&format!("u{t}-{i}")),
                            policy: Some(p("Pilot")),
                        },
                    )?;
                    // Every writer adds one group to the same user (a read-modify-write of
                    // one row inside the transaction): a lost update would drop one.
                    let shared = u("shared");
                    s.apply(
                        &Actor::new(format!("thread-{t}"), "t"),
                        &Change::SetGroupMembers {
                            group: g(&format!("g{t}-{i}")),
                            users: vec![shared.clone()],
                        },
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer")?;
    }
    let s = fx.open();
    assert_eq!(s.view(&p("Pilot"))?.users.len(), THREADS * PER);
    assert_eq!(s.user(&u("shared"))?.groups.len(), THREADS * PER);
    let n = (2 * THREADS * PER + 1) as u64;
    assert_eq!(s.revision()?, n);
    let log = s.audit(&AuditQuery {
        limit: 10_000,
        ..Default::default()
    })?;
    let revs: Vec<u64> = log.iter().rev().map(|r| r.revision).collect();
    assert_eq!(
        revs,
        (1..=n).collect::<Vec<_>>(),
        "one record per change, in order"
    );
    Ok(())
}

fn batch_assignment_and_group_sync(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    s.apply(&actor(), &set("Secure", CallingE2ee::Required))?;
    s.apply(&actor(), &set("Open", CallingE2ee::DisabledUserOverride))?;
    let users: Vec<UserId> = (0..500).map(|i| u(&format!("b{i:04}"))).collect();
    let r = s.apply(
        &actor(),
        &Change::GrantUsers {
            users: users.clone(),
            policy: Some(p("Secure")),
        },
    )?;
    assert!(r.changed);
    assert_eq!(r.after["changed"], 500);
    assert_eq!(s.view(&p("Secure"))?.users.len(), 500);
    assert_eq!(s.effective(&u("b0042"))?.claim, E2eeClaim::Required);
    // The same batch again is a no-op.
    assert!(
        !s.apply(
            &actor(),
            &Change::GrantUsers {
                users: users.clone(),
                policy: Some(p("Secure"))
            }
        )?
        .changed
    );
    // Sync a group: 300 members, then a different 300 (100 overlap).
    s.apply(&actor(), &grant_group("eng", "Open", 1))?;
    let first: Vec<UserId> = (0..300).map(|i| u(&format!("m{i:04}"))).collect();
    let second: Vec<UserId> = (200..500).map(|i| u(&format!("m{i:04}"))).collect();
    s.apply(
        &actor(),
        &Change::SetGroupMembers {
            group: g("eng"),
            users: first,
        },
    )?;
    let r = s.apply(
        &actor(),
        &Change::SetGroupMembers {
            group: g("eng"),
            users: second,
        },
    )?;
    assert_eq!(r.after["members"], 300);
    assert_eq!(r.after["changed"], 400, "200 left, 200 joined");
    assert_eq!(s.effective(&u("m0100"))?.source, Source::GlobalDefault);
    assert_eq!(s.effective(&u("m0300"))?.policy, p("Open"));
    // The batch is one audit record, indexed by every user it touched.
    let for_user = s.audit(&AuditQuery {
        user: Some(u("b0042")),
        limit: 10,
        ..Default::default()
    })?;
    assert_eq!(for_user.len(), 1);
    assert_eq!(for_user[0].op, "grant_users");
    Ok(())
}

fn import_export_roundtrip_from_the_file_store(fx: Arc<dyn Fixture>) -> Result<()> {
    // A policy.json written by the file store of earlier versions.
    let dir = tempfile::tempdir()?;
    let old = PolicyStore::open(dir.path())?;
    old.apply("cli:old", &set("Pilot", CallingE2ee::DisabledUserOverride))?;
    old.apply("cli:old", &grant_group("eng", "Pilot", 3))?;
    old.apply(
        "cli:old",
        &Change::GrantUser {
            user: u("alice"),
            policy: Some(p("Pilot")),
        },
    )?;
    old.apply("cli:old", &switch("alice", true))?;
    old.apply(
        "cli:old",
        &Change::SetUserGroups {
            user: u("bob"),
            groups: [g("eng")].into(),
        },
    )?;
    let state = old.load()?;

    let s = fx.open();
    s.apply(&actor(), &set("Leftover", CallingE2ee::Disabled))?;
    let r = s.import(&actor(), &state)?;
    assert!(r.changed);
    assert_eq!(s.effective(&u("alice"))?.claim, E2eeClaim::Allowed);
    assert_eq!(s.effective(&u("bob"))?.policy, p("Pilot"));
    assert!(s.view(&p("Leftover")).is_err(), "import replaces the state");
    let back = s.export()?;
    assert_eq!(back.list(), state.list());
    assert_eq!(
        back.users().collect::<Vec<_>>(),
        state.users().collect::<Vec<_>>()
    );
    assert_eq!(
        back.group_grants().collect::<Vec<_>>(),
        state.group_grants().collect::<Vec<_>>()
    );
    let log = s.audit(&AuditQuery::default())?;
    assert_eq!(log[0].op, "import");
    // An invalid state is refused before anything is written.
    let rev = s.revision()?;
    let broken: duet_policy::PolicyState =
        serde_json::from_str(r#"{"format":1,"revision":1,"policies":{"Pilot":"disabled"}}"#)?;
    assert!(s.import(&actor(), &broken).is_err());
    assert_eq!(s.revision()?, rev);
    Ok(())
}

fn audit_query_by_user_and_time(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    s.apply(&actor(), &switch("alice", true))?;
    s.apply(&actor(), &switch("bob", true))?;
    std::thread::sleep(Duration::from_millis(20));
    let mid = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(20));
    s.apply(&actor(), &switch("alice", false))?;
    let q = |user: Option<&str>, since: Option<u64>| {
        s.audit(&AuditQuery {
            user: user.map(u),
            since_ms: since,
            limit: 100,
        })
    };
    assert_eq!(q(Some("alice"), None)?.len(), 2);
    assert_eq!(q(Some("bob"), None)?.len(), 1);
    assert_eq!(q(None, Some(mid))?.len(), 1);
    assert_eq!(q(Some("bob"), Some(mid))?.len(), 0);
    assert_eq!(q(None, None)?.len(), 3);
    Ok(())
}

fn credentials_are_named_with_roles_and_hashed(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    let cred = Credential {
        name: "portal".into(),
        role: Role::ReadOnly,
        created_ms: 1,
    };
    s.put_credential(&actor(), &cred, &secret_sha256("s3cret-portal"))?;
    assert_eq!(
        s.credential_by_secret(&secret_sha256("s3cret-portal"))?,
        Some(cred.clone())
    );
    assert_eq!(s.credential_by_secret(&secret_sha256("wrong"))?, None);
    assert_eq!(s.credentials()?, vec![cred]);
    assert!(s.remove_credential(&actor(), "portal")?);
    assert!(!s.remove_credential(&actor(), "portal")?);
    let log = s.audit(&AuditQuery::default())?;
    assert_eq!(log.len(), 2, "credential changes are audited");
    let text = serde_json::to_string(&log)?;
    assert!(
        !text.contains(&secret_sha256("s3cret-portal")),
        "never the secret's hash"
    );
    Ok(())
}

fn tenant_apply_is_idempotent_and_all_or_nothing(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    s.apply(&actor(), &set("Old", CallingE2ee::Disabled))?;
    s.apply(
        &actor(),
        &Change::GrantUser {
            user: u("olga"),
            policy: Some(p("Old")),
        },
    )?;
    s.apply(&actor(), &set("Pilot", CallingE2ee::Disabled))?;
    s.apply(&actor(), &grant_group("eng", "Pilot", 1))?;
    s.apply(&actor(), &grant_group("sales", "Pilot", 2))?;
    let text = r#"
[policies]
Global = "disabled-user-override"
Pilot = "disabled-user-override"
Secure = "required"

[groups.eng]
policy = "Secure"
rank = 2

[groups.sales]
policy = "Pilot"
rank = 1

[users]
alice = "Secure"
"#;
    let t = Tenant::parse(text)?;
    let plan = t.plan(&*s)?;
    let diff = plan.text();
    assert!(diff.contains("+ policy Secure"), "{diff}");
    assert!(diff.contains("- policy Old"), "{diff}");
    assert!(diff.contains("~ group eng"), "{diff}");
    // Ranks swap between eng and sales: the plan orders it so no rule trips.
    let applied = s.apply_all(&actor(), &plan.changes)?;
    assert!(applied.iter().all(|a| a.changed));
    assert_eq!(s.effective(&u("alice"))?.claim, E2eeClaim::Required);
    assert_eq!(s.effective(&u("olga"))?.source, Source::GlobalDefault);
    // Idempotent: the same file again is no change.
    assert!(t.plan(&*s)?.is_empty(), "{}", t.plan(&*s)?.text());
    // Bad input names the field, and nothing is applied.
    for (bad, field) in [
        ("[policies]\nPilot = \"enabled\"\n", "enabled"),
        ("[groups.eng]\npolicy = \"Nope\"\nrank = 1\n", "groups.eng.policy"),
        ("[policies]\nA = \"disabled\"\n[groups.x]\npolicy = \"A\"\nrank = 1\n[groups.y]\npolicy = \"A\"\nrank = 1\n", "groups.y.rank"),
        ("[users]\n\"bad user\" = \"Global\"\n", "users.bad user"),
        ("[policies]\n\"My Policy\" = \"disabled\"\n", "policies.My Policy"),
    ] {
        let err = Tenant::parse(bad).expect_err(bad);
        assert!(err.to_string().contains(field), "{bad}: {err}");
    }
    // A plan that fails half-way (a rank taken by a group the file does not mention
    // cannot happen, so force one: a change list with a refused change at its end).
    let rev = s.revision()?;
    let r = s.apply_all(
        &actor(),
        &[
            set("Extra", CallingE2ee::Disabled),
            grant_group("x", "Nope", 9),
        ],
    );
    assert!(r.is_err());
    assert_eq!(s.revision()?, rev);
    assert!(
        s.view(&p("Extra")).is_err(),
        "the first change was rolled back"
    );
    Ok(())
}

fn required_is_in_the_token_whatever_the_switch(fx: Arc<dyn Fixture>) -> Result<()> {
    let s = fx.open();
    s.apply(&actor(), &set("Secure", CallingE2ee::Required))?;
    s.apply(
        &actor(),
        &Change::GrantUser {
            user: u("rita"),
            policy: Some(p("Secure")),
        },
    )?;
    let key = SigningKey::ed25519_from_seed("k", &[3u8; 32])?;
    let nodes = NodeSet::from_static(["n1", "n2", "n3", "n4"])?;
    let issuer = Issuer::new(&*s, &key, &nodes);
    let m = issuer.mint(
        SessionId::new("s")?,
        u("rita"),
        DeviceId::new("d")?,
        Duration::from_secs(60),
    )?;
    let claims = TokenKeyring::new(vec![key.verifying_key()]).verify(
        &m.token,
        &duet_proto::VerifyOptions::at(duet_proto::clock::unix_now()),
    )?;
    assert_eq!(
        claims.e2ee,
        E2eeClaim::Required,
        "switch off: still required"
    );
    assert_eq!(claims.nodes.len(), 3);
    Ok(())
}

// ---- SQLite only: properties of the embedded file ----

/// On a full disk a change fails and leaves no audit record and no reused revision. The
/// old file store appended the audit line before writing the state, so each failed
/// attempt left a record of a change that never happened (issue 16, finding 4).
#[test]
fn sqlite_full_disk_leaves_no_audit_record_for_the_failed_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.db");
    SqliteStore::open(&path)?.apply(&actor(), &switch("alice", true))?;
    let pages: u64 = {
        let c = std::fs::metadata(&path)?.len() / 4096;
        c + 2
    };
    let s = SqliteStore::open_with_max_pages(&path, pages)?;
    let big: Vec<UserId> = (0..20_000)
        .map(|i| u(&format!("user-with-a-long-id-{i:06}")))
        .collect();
    s.apply(&actor(), &set("P", CallingE2ee::Disabled))?;
    let rev = s.revision()?;
    for _ in 0..3 {
        let err = s
            .apply(
                &actor(),
                &Change::GrantUsers {
                    users: big.clone(),
                    policy: Some(p("P")),
                },
            )
            .expect_err("disk full");
        assert!(err.to_string().contains("full"), "{err}");
    }
    let fresh = SqliteStore::open(&path)?;
    assert_eq!(fresh.revision()?, rev);
    let log = fresh.audit(&AuditQuery::default())?;
    assert_eq!(log.len() as u64, rev, "no record of the failed attempts");
    assert!(fresh.view(&p("P"))?.users.is_empty());
    // And the next change that fits takes the next revision.
    assert_eq!(
        fresh.apply(&actor(), &switch("bob", true))?.revision,
        rev + 1
    );
    Ok(())
}

/// A read-only store still serves reads and mints; changes get a typed error. The old
/// file store took its lock file read-write even to read, so a read-only store also
/// stopped minting (issue 16, finding 6).
#[test]
fn sqlite_read_only_store_still_serves_reads_and_mints() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.db");
    {
        let s = SqliteStore::open(&path)?;
        s.apply(&actor(), &set(GLOBAL, CallingE2ee::DisabledUserOverride))?;
        s.apply(&actor(), &switch("alice", true))?;
    }
    let ro = SqliteStore::open_read_only(&path)?;
    assert!(ro.is_read_only());
    assert_eq!(ro.effective(&u("alice"))?.claim, E2eeClaim::Allowed);
    let key = SigningKey::ed25519_from_seed("k", &[1u8; 32])?;
    let nodes = NodeSet::none();
    let m = Issuer::new(&ro, &key, &nodes).mint(
        SessionId::new("s")?,
        u("alice"),
        DeviceId::new("d")?,
        Duration::from_secs(60),
    )?;
    assert_eq!(m.effective.claim, E2eeClaim::Allowed);
    let err = ro
        .apply(&actor(), &switch("bob", true))
        .expect_err("read-only");
    assert!(
        matches!(
            err,
            PolicyError::Store(duet_policy::StoreError::ReadOnly { .. })
        ),
        "{err}"
    );
    assert_eq!(err.code(), "store_read_only");
    Ok(())
}
