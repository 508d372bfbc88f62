//! The administrator's policy model driven through the real `duet-relay policy` and
//! `duet-relay user` commands, as a script would: exit codes, messages, `--json`, and many
//! commands at once against one store (no lost update, every change audited). Every test
//! runs twice: on the embedded SQLite store (a directory) and on PostgreSQL
//! (`--store postgres://…?schema=…`, `DUET_TEST_POSTGRES` from `.ci/postgres.sh`).

use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use duet_policy::store::test_postgres_dsn;
use duet_policy::{Actor, AuditQuery, Change, PolicyName, Store};
use duet_proto::UserId;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_duet-relay");

fn cmd(store: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--store")
        .arg(store)
        // Keep error output to the message (a developer's RUST_BACKTRACE adds a trace).
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("DUET_POLICY_STORE")
        .env("USER", "test-admin")
        .env_remove("SUDO_USER")
        .output()
        .expect("run duet-relay")
}

/// Runs a command that must succeed; returns stdout.
fn ok(store: &str, args: &[&str]) -> Result<String> {
    let out = cmd(store, args);
    ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs a command that must fail; returns stderr.
fn fails(store: &str, args: &[&str]) -> Result<String> {
    let out = cmd(store, args);
    ensure!(!out.status.success(), "{args:?} unexpectedly succeeded");
    Ok(String::from_utf8(out.stderr)?)
}

fn effective(store: &str, user: &str) -> Result<Value> {
    let out = ok(store, &["policy", "effective", "--user", user, "--json"])?;
    serde_json::from_str(&out).context("effective --json is JSON")
}

/// `policy set <name> --calling-e2ee <value>`, which must succeed.
fn set_policy(store: &str, name: &str, calling_e2ee: &str) -> Result<String> {
    ok(
        store,
        &["policy", "set", name, "--calling-e2ee", calling_e2ee],
    )
}

/// `policy grant --group … --policy … --rank …`.
fn grant_group<'a>(group: &'a str, policy: &'a str, rank: &'a str) -> [&'a str; 8] {
    [
        "policy", "grant", "--group", group, "--policy", policy, "--rank", rank,
    ]
}

fn claim(store: &str, user: &str) -> Result<String> {
    Ok(effective(store, user)?["claim"]
        .as_str()
        .context("claim")?
        .to_owned())
}

/// A fresh store for one test: a temp directory, or a fresh schema on the PostgreSQL
/// server. Dropping it removes it.
enum Loc {
    // The TempDir is held so the directory lives as long as the test.
    Dir(#[allow(dead_code)] tempfile::TempDir, String),
    Pg(String),
}

impl Loc {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = dir.path().join("policy").display().to_string();
        Loc::Dir(dir, s)
    }
    fn postgres() -> Option<Self> {
        let dsn = test_postgres_dsn()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let sep = if dsn.contains('?') { '&' } else { '?' };
        Some(Loc::Pg(format!(
            "{dsn}{sep}schema=cli_{}_{nanos}",
            std::process::id()
        )))
    }
    fn as_str(&self) -> &str {
        match self {
            Loc::Dir(_, s) | Loc::Pg(s) => s,
        }
    }
    fn open(&self) -> Result<Box<dyn Store>> {
        Ok(duet_policy::store::open(self.as_str())?)
    }
}

impl Drop for Loc {
    fn drop(&mut self) {
        if let Loc::Pg(url) = self {
            let (dsn, schema) = duet_policy::store::split_schema(url);
            if let Ok(s) = duet_policy::PostgresStore::open_in_schema(&dsn, schema.as_deref()) {
                let _ = s.drop_schema();
            }
        }
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> anyhow::Result<()> {
                super::$name(&super::Loc::sqlite())
            }
            #[test]
            fn postgres() -> anyhow::Result<()> {
                match super::Loc::postgres() {
                    Some(l) => super::$name(&l),
                    None => Ok(()),
                }
            }
        }
    )*};
}

on_both_stores!(
    the_whole_model_through_the_commands,
    errors_exit_non_zero_and_name_the_problem,
    concurrent_processes_and_threads_lose_no_update,
    apply_audit_import_export_and_credentials,
    policy_serve_shares_the_store_with_the_commands,
);

fn all_audit(store: &dyn Store) -> Result<Vec<duet_policy::AuditRecord>> {
    let mut v = store.audit(&AuditQuery {
        limit: 100_000,
        ..Default::default()
    })?;
    v.reverse(); // oldest first
    Ok(v)
}

fn the_whole_model_through_the_commands(loc: &Loc) -> Result<()> {
    let s = loc.as_str();

    // Out of the box: only Global, disabled; everyone gets policy_disabled.
    let list: Value = serde_json::from_str(&ok(s, &["policy", "list", "--json"])?)?;
    let policies = list["policies"].as_array().context("policies")?;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["name"], "Global");
    assert_eq!(policies[0]["calling_e2ee"], "disabled");
    assert_eq!(claim(s, "alice")?, "policy_disabled");
    let text = ok(s, &["policy", "effective", "--user", "alice"])?;
    assert!(text.contains("Global (global default)"), "{text}");

    // Enable for the whole tenant: Global allows the user override; each user still
    // has to turn it on.
    set_policy(s, "Global", "disabled-user-override")?;
    assert_eq!(claim(s, "alice")?, "user_not_enabled");
    ok(s, &["user", "e2ee", "--user", "alice", "on"])?;
    assert_eq!(claim(s, "alice")?, "allowed");
    ok(s, &["user", "e2ee", "--user", "alice", "off"])?;
    assert_eq!(claim(s, "alice")?, "user_not_enabled");

    // Back to a closed tenant, and a named policy granted to one user.
    set_policy(s, "Global", "disabled")?;
    set_policy(s, "E2EE-Pilot", "disabled-user-override")?;
    ok(
        s,
        &["policy", "grant", "--user", "bob", "--policy", "E2EE-Pilot"],
    )?;
    ok(s, &["user", "e2ee", "--user", "bob", "on"])?;
    ok(s, &["user", "e2ee", "--user", "carol", "on"])?;
    let bob = effective(s, "bob")?;
    assert_eq!(bob["policy"], "E2EE-Pilot");
    assert_eq!(bob["source"]["kind"], "direct");
    assert_eq!(bob["claim"], "allowed");
    assert_eq!(
        claim(s, "carol")?,
        "policy_disabled",
        "only bob was granted it"
    );
    let show: Value = serde_json::from_str(&ok(s, &["policy", "show", "E2EE-Pilot", "--json"])?)?;
    assert_eq!(show["users"], serde_json::json!(["bob"]));

    // A policy still assigned cannot be removed; the error names the holder.
    let err = fails(s, &["policy", "remove", "E2EE-Pilot"])?;
    assert!(err.contains("bob") && err.contains("--unassign"), "{err}");

    // Unassigning returns bob to Global.
    ok(s, &["policy", "grant", "--user", "bob", "--none"])?;
    let bob = effective(s, "bob")?;
    assert_eq!(bob["policy"], "Global");
    assert_eq!(bob["source"]["kind"], "global_default");
    assert_eq!(bob["claim"], "policy_disabled");

    // Group ranks: the lowest rank among the user's groups wins; direct beats groups.
    set_policy(s, "Closed", "disabled")?;
    ok(s, &grant_group("eng", "E2EE-Pilot", "1"))?;
    ok(s, &grant_group("legal", "Closed", "2"))?;
    ok(
        s,
        &["user", "groups", "--user", "carol", "--set", "legal,eng"],
    )?;
    let carol = effective(s, "carol")?;
    assert_eq!(carol["policy"], "E2EE-Pilot");
    assert_eq!(carol["source"]["kind"], "group");
    assert_eq!(carol["source"]["group"], "eng");
    assert_eq!(carol["source"]["rank"], 1);
    assert_eq!(carol["claim"], "allowed");
    let err = fails(s, &grant_group("legal", "Closed", "1"))?;
    assert!(err.contains("rank 1") && err.contains("eng"), "{err}");
    ok(s, &grant_group("eng", "E2EE-Pilot", "3"))?;
    assert_eq!(
        claim(s, "carol")?,
        "policy_disabled",
        "legal (rank 2) now wins"
    );
    ok(
        s,
        &[
            "policy",
            "grant",
            "--user",
            "carol",
            "--policy",
            "E2EE-Pilot",
        ],
    )?;
    assert_eq!(claim(s, "carol")?, "allowed", "direct assignment wins");
    let text = ok(s, &["policy", "effective", "--user", "carol"])?;
    assert!(text.contains("E2EE-Pilot (direct assignment)"), "{text}");

    // Compliance recording beats everything.
    ok(
        s,
        &["user", "compliance-recording", "--user", "carol", "on"],
    )?;
    assert_eq!(claim(s, "carol")?, "compliance_recording");
    ok(
        s,
        &["user", "compliance-recording", "--user", "carol", "off"],
    )?;
    assert_eq!(claim(s, "carol")?, "allowed");

    // Removing with --unassign returns everyone holding it to inheritance.
    ok(s, &["policy", "remove", "E2EE-Pilot", "--unassign"])?;
    let carol = effective(s, "carol")?;
    assert_eq!(carol["policy"], "Closed", "back to her remaining group");
    let list = ok(s, &["policy", "list"])?;
    assert!(!list.contains("E2EE-Pilot"), "{list}");

    // Every change is in the audit log, with the CLI actor.
    let store = loc.open()?;
    let audit = all_audit(&*store)?;
    assert_eq!(audit.len() as u64, store.revision()?);
    assert!(audit.iter().all(|r| r.actor == "cli:test-admin"));
    Ok(())
}

fn errors_exit_non_zero_and_name_the_problem(loc: &Loc) -> Result<()> {
    let s = loc.as_str();
    let err = fails(
        s,
        &["policy", "set", "Sales Team", "--calling-e2ee", "disabled"],
    )?;
    assert!(
        err.contains("single tokens") && err.contains("no spaces"),
        "{err}"
    );
    let err = fails(s, &["policy", "show", "Nope"])?;
    assert!(err.contains("no policy named \"Nope\""), "{err}");
    let err = fails(
        s,
        &["policy", "grant", "--user", "alice", "--policy", "Nope"],
    )?;
    assert!(err.contains("Nope"), "{err}");
    let err = fails(s, &["policy", "remove", "Global"])?;
    assert!(err.contains("Global policy cannot be removed"), "{err}");
    let err = fails(s, &["policy", "set", "P", "--calling-e2ee", "enabled"])?;
    assert!(
        err.contains("disabled-user-override"),
        "clap lists the values: {err}"
    );
    let err = fails(
        s,
        &["policy", "grant", "--group", "g", "--policy", "Global"],
    )?;
    assert!(err.contains("--rank"), "{err}");
    let err = fails(s, &["user", "e2ee", "--user", "bad user", "on"])?;
    assert!(err.contains("user id"), "{err}");
    let err = fails(s, &["user", "groups", "--user", "a", "--set", "ok,not ok"])?;
    assert!(err.contains("group name"), "{err}");
    // None of that changed anything.
    assert_eq!(loc.open()?.revision()?, 0);
    Ok(())
}

fn concurrent_processes_and_threads_lose_no_update(loc: &Loc) -> Result<()> {
    const PROCS: usize = 3; // concurrent chains of `duet-relay policy grant` processes
    const PER_PROC: usize = 8;
    const THREADS: usize = 3; // in-process writers at the same time
    const PER_THREAD: usize = 15;

    let s = loc.as_str().to_owned();
    set_policy(&s, "Pilot", "disabled-user-override")?;

    let mut handles = Vec::new();
    for p in 0..PROCS {
        let s = s.clone();
        handles.push(std::thread::spawn(move || -> Result<()> {
            for i in 0..PER_PROC {
                let user = format!("proc{p}-{i}");
                ok(
                    &s,
                    &["policy", "grant", "--user", &user, "--policy", "Pilot"],
                )?;
            }
            Ok(())
        }));
    }
    for t in 0..THREADS {
        let s = s.clone();
        handles.push(std::thread::spawn(move || -> Result<()> {
            let store = duet_policy::store::open(&s)?;
            for i in 0..PER_THREAD {
                store.apply(
                    &Actor::new("thread", "test"),
                    &Change::GrantUser {
                        user: UserId::new(format!("thread{t}-{i}"))?,
                        policy: Some(PolicyName::new("Pilot")?),
                    },
                )?;
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().expect("writer thread")?;
    }

    let expected = PROCS * PER_PROC + THREADS * PER_THREAD;
    let show: Value = serde_json::from_str(&ok(&s, &["policy", "show", "Pilot", "--json"])?)?;
    assert_eq!(
        show["users"].as_array().context("users")?.len(),
        expected,
        "every grant survived"
    );
    let store = loc.open()?;
    let audit = all_audit(&*store)?;
    assert_eq!(
        audit.len(),
        expected + 1,
        "every change is in the audit log"
    );
    let revisions: Vec<u64> = audit.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, (1..=expected as u64 + 1).collect::<Vec<_>>());
    assert_eq!(
        audit.iter().filter(|r| r.actor == "cli:test-admin").count(),
        PROCS * PER_PROC + 1
    );
    Ok(())
}

/// The new commands: `policy apply -f` (diff, dry run, idempotent), `policy audit --user
/// --since`, `policy export` / `import` (the old policy.json format), credentials.
fn apply_audit_import_export_and_credentials(loc: &Loc) -> Result<()> {
    let s = loc.as_str();
    let dir = tempfile::tempdir()?;
    let tenant = dir.path().join("tenant.toml");
    std::fs::write(
        &tenant,
        "[policies]\nGlobal = \"disabled-user-override\"\nSecure = \"required\"\n\n\
         [groups.eng]\npolicy = \"Secure\"\nrank = 1\n\n[users]\nalice = \"Secure\"\n",
    )?;
    let t = tenant.to_str().context("path")?;
    let dry = ok(s, &["policy", "apply", "-f", t, "--dry-run"])?;
    assert!(
        dry.contains("+ policy Secure: calling-e2ee required"),
        "{dry}"
    );
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(loc.open()?.revision()?, 0, "a dry run changes nothing");
    let out = ok(s, &["policy", "apply", "-f", t])?;
    assert!(out.contains("applied 4 changes"), "{out}");
    assert_eq!(claim(s, "alice")?, "required");
    let again = ok(s, &["policy", "apply", "-f", t])?;
    assert!(again.contains("no changes"), "{again}");

    // A bad file names the field and applies nothing.
    std::fs::write(&tenant, "[groups.eng]\npolicy = \"Nope\"\nrank = 1\n")?;
    let err = fails(s, &["policy", "apply", "-f", t])?;
    assert!(err.contains("groups.eng.policy"), "{err}");
    assert_eq!(loc.open()?.revision()?, 4);

    ok(s, &["user", "e2ee", "--user", "bob", "on"])?;
    let audit: Value =
        serde_json::from_str(&ok(s, &["policy", "audit", "--user", "alice", "--json"])?)?;
    let recs = audit["records"].as_array().context("records")?;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["op"], "grant_user");
    assert_eq!(recs[0]["credential"], "local-cli");
    let text = ok(s, &["policy", "audit", "--since", "1h"])?;
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(ok(s, &["policy", "audit", "--since", "2999-01-01"])?.is_empty());

    // Export, then import into a fresh store of the other kind: same state.
    let json = ok(s, &["policy", "export"])?;
    let file = dir.path().join("policy.json");
    std::fs::write(&file, &json)?;
    let other = tempfile::tempdir()?;
    let o = other.path().join("p").display().to_string();
    let out = ok(
        &o,
        &["policy", "import", "--from", file.to_str().context("path")?],
    )?;
    assert!(out.contains("imported"), "{out}");
    assert_eq!(claim(&o, "alice")?, "required");
    assert_eq!(claim(&o, "bob")?, "allowed");
    let back: Value = serde_json::from_str(&ok(&o, &["policy", "export"])?)?;
    let orig: Value = serde_json::from_str(&json)?;
    assert_eq!(back["policies"], orig["policies"]);
    assert_eq!(back["users"], orig["users"]);
    assert_eq!(back["groups"], orig["groups"]);

    // Batch assignment from a file: one transaction, one audit record.
    let users = dir.path().join("users.txt");
    let grant_from_file = [
        "policy",
        "grant",
        "--users-from",
        users.to_str().context("path")?,
        "--policy",
        "Secure",
    ];
    std::fs::write(&users, "# pilot wave 2\ndan\nerin\n\nfrank\n")?;
    let rev = loc.open()?.revision()?;
    let out = ok(s, &grant_from_file)?;
    assert!(out.contains("3 users: granted policy Secure"), "{out}");
    assert_eq!(loc.open()?.revision()?, rev + 1);
    assert_eq!(claim(s, "erin")?, "required");
    std::fs::write(&users, "gina\nnot valid\n")?;
    let err = fails(s, &grant_from_file)?;
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(loc.open()?.revision()?, rev + 1, "nothing half-applied");

    // Credentials: the secret is printed once; list shows name and role.
    let out = ok(
        s,
        &[
            "policy",
            "credential",
            "add",
            "--name",
            "portal",
            "--role",
            "read-only",
        ],
    )?;
    assert!(out.contains("duetadm_"), "{out}");
    let list = ok(s, &["policy", "credential", "list"])?;
    assert!(
        list.contains("portal") && list.contains("read-only"),
        "{list}"
    );
    let err = fails(
        s,
        &[
            "policy",
            "credential",
            "add",
            "--name",
            "bad name",
            "--role",
            "admin",
        ],
    )?;
    assert!(err.contains("name"), "{err}");
    Ok(())
}

/// An old data directory (policy.json, no database) is refused with the command that
/// migrates it, and `policy import --from <dir>` migrates it in place.
#[test]
fn an_old_file_store_is_migrated_by_import() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = dir.path().join("policy");
    let old = duet_policy::PolicyStore::open(&s)?;
    old.apply(
        "cli:old",
        &Change::SetUserE2ee {
            user: UserId::new("alice")?,
            on: true,
        },
    )?;
    let loc = s.display().to_string();
    let err = fails(&loc, &["policy", "list"])?;
    assert!(err.contains("policy import --from"), "{err}");
    ok(&loc, &["policy", "import", "--from", &loc])?;
    let e = effective(&loc, "alice")?;
    assert_eq!(e["user_switch"], true);
    Ok(())
}

/// `duet-relay policy serve` serves the admin API on the store the commands change (on
/// PostgreSQL too: its blocking client runs on the server's blocking threads).
fn policy_serve_shares_the_store_with_the_commands(loc: &Loc) -> Result<()> {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    let s = loc.as_str().to_owned();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-admin-token-for-tests\n")?;
    set_policy(&s, "Pilot", "disabled-user-override")?;
    // A free port: bind, read it, release (the server binds it right after).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "policy",
            "serve",
            "--listen",
            &addr,
            "--store",
            &s,
            "--admin-token-file",
        ])
        .arg(&token_file)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        let mut body = String::new();
        for _ in 0..100 {
            if let Ok(mut c) = std::net::TcpStream::connect(&addr) {
                write!(
                    c,
                    "GET /v1/policies/Pilot HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-admin-token-for-tests\r\nConnection: close\r\n\r\n"
                )?;
                c.read_to_string(&mut body)?;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("disabled-user-override"), "{body}");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `token mint --nodes-from static:…` places the session by rendezvous hashing over the
/// node set: the token lists the primary and two fallbacks, as `duet_proto::placement`
/// ranks them (the same function the relays and the load tester use).
#[test]
fn token_mint_places_the_session_over_the_node_set() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mint = |session: &str, nodes_from: &str| {
        Command::new(BIN)
            .args(["token", "mint", "--session", session, "--user", "ann"])
            .args(["--device", "d", "--nodes-from", nodes_from, "--data-dir"])
            .arg(dir.path())
            .env_remove("DUET_POLICY_STORE")
            .output()
    };
    let out = mint("call-9", "static:relay-0,relay-1,relay-2,relay-3,relay-4")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let claims = duet_proto::JoinToken::peek(&token)?;
    let nodes: Vec<&str> = claims.claims.nodes.iter().map(|n| n.as_str()).collect();
    let all = ["relay-0", "relay-1", "relay-2", "relay-3", "relay-4"];
    assert_eq!(nodes, duet_proto::placement::candidates("call-9", &all, 3));
    let bad = mint("s", "carrier-pigeon:x")?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--nodes-from"));
    Ok(())
}
