//! The administrator's policy model driven through the real `duet-relay policy` and
//! `duet-relay user` commands, as a script would: exit codes, messages, `--json`, and many
//! commands at once against one store (no lost update, every change audited).

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use duet_proto::UserId;
use duet_policy::{Change, PolicyName, PolicyStore};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_duet-relay");

fn cmd(store: &Path, args: &[&str]) -> Output {
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
fn ok(store: &Path, args: &[&str]) -> Result<String> {
    let out = cmd(store, args);
    ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs a command that must fail; returns stderr.
fn fails(store: &Path, args: &[&str]) -> Result<String> {
    let out = cmd(store, args);
    ensure!(!out.status.success(), "{args:?} unexpectedly succeeded");
    Ok(String::from_utf8(out.stderr)?)
}

fn effective(store: &Path, user: &str) -> Result<Value> {
    let out = ok(store, &["policy", "effective", "--user", user, "--json"])?;
    serde_json::from_str(&out).context("effective --json is JSON")
}

fn claim(store: &Path, user: &str) -> Result<String> {
    Ok(effective(store, user)?["claim"]
        .as_str()
        .context("claim")?
        .to_owned())
}

#[test]
fn the_whole_model_through_the_commands() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = &dir.path().join("policy");

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
    ok(
        s,
        &[
            "policy",
            "set",
            "Global",
            "--calling-e2ee",
            "disabled-user-override",
        ],
    )?;
    assert_eq!(claim(s, "alice")?, "user_not_enabled");
    ok(s, &["user", "e2ee", "--user", "alice", "on"])?;
    assert_eq!(claim(s, "alice")?, "allowed");
    ok(s, &["user", "e2ee", "--user", "alice", "off"])?;
    assert_eq!(claim(s, "alice")?, "user_not_enabled");

    // Back to a closed tenant, and a named policy granted to one user.
    ok(
        s,
        &["policy", "set", "Global", "--calling-e2ee", "disabled"],
    )?;
    ok(
        s,
        &[
            "policy",
            "set",
            "E2EE-Pilot",
            "--calling-e2ee",
            "disabled-user-override",
        ],
    )?;
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
    ok(
        s,
        &["policy", "set", "Closed", "--calling-e2ee", "disabled"],
    )?;
    ok(
        s,
        &[
            "policy",
            "grant",
            "--group",
            "eng",
            "--policy",
            "E2EE-Pilot",
            "--rank",
            "1",
        ],
    )?;
    ok(
        s,
        &[
            "policy", "grant", "--group", "legal", "--policy", "Closed", "--rank", "2",
        ],
    )?;
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
    let err = fails(
        s,
        &[
            "policy", "grant", "--group", "legal", "--policy", "Closed", "--rank", "1",
        ],
    )?;
    assert!(err.contains("rank 1") && err.contains("eng"), "{err}");
    ok(
        s,
        &[
            "policy",
            "grant",
            "--group",
            "eng",
            "--policy",
            "E2EE-Pilot",
            "--rank",
            "3",
        ],
    )?;
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
    let store = PolicyStore::open(s)?;
    let audit = store.audit()?;
    assert_eq!(audit.len() as u64, store.load()?.revision);
    assert!(audit.iter().all(|r| r.actor == "cli:test-admin"));
    Ok(())
}

#[test]
fn errors_exit_non_zero_and_name_the_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = dir.path();
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
    assert_eq!(PolicyStore::open(s)?.load()?.revision, 0);
    Ok(())
}

#[test]
fn concurrent_processes_and_threads_lose_no_update() -> Result<()> {
    const PROCS: usize = 3; // concurrent chains of `duet-relay policy grant` processes
    const PER_PROC: usize = 8;
    const THREADS: usize = 3; // in-process writers at the same time
    const PER_THREAD: usize = 15;

    let dir = tempfile::tempdir()?;
    let s = dir.path().to_owned();
    ok(
        &s,
        &[
            "policy",
            "set",
            "Pilot",
            "--calling-e2ee",
            "disabled-user-override",
        ],
    )?;

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
            let store = PolicyStore::open(&s)?;
            for i in 0..PER_THREAD {
                store.apply(
                    "thread",
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
    let store = PolicyStore::open(&s)?;
    let audit = store.audit()?;
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
