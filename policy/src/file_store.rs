//! The file store of earlier versions: one directory holding `policy.json` (the whole
//! state), `audit.jsonl` and a lock file. Kept as the import/export format (`policy
//! import` reads a `policy.json`, `policy export` writes one) and as the reference the
//! scale benchmark measures the databases against; the stores in use are in `store`.
//!
//! ```text
//! <store>/policy.json    the whole PolicyState, pretty JSON, replaced atomically
//! <store>/audit.jsonl    append-only audit log, one JSON object per change
//! <store>/.lock          advisory lock (flock) serialising writers
//! ```
//!
//! Every change reads, rewrites and fsyncs the whole file under one exclusive `flock`, and
//! every read parses it whole: fine for a few thousand users, ~100 ms per mint and a few
//! changes per second at 100,000 (benches/RESULTS.md), which is why the databases replaced
//! it. Writes are crash-safe (temp file, fsync, rename, fsync the directory); the audit
//! line is appended before the state is replaced, so a crash (or a failed write) between
//! the two leaves a line for a change that did not happen: the SQL stores write the audit
//! record in the change's transaction instead.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{Change, PolicyState};
use crate::store::{Actor, AuditRecord, StoreError};
use crate::PolicyError;

pub(crate) const STATE_FILE: &str = "policy.json";
const AUDIT_FILE: &str = "audit.jsonl";
const LOCK_FILE: &str = ".lock";
const TMP_PREFIX: &str = "policy.json.tmp-";

/// What [`PolicyStore::apply`] did.
#[derive(Debug, Clone)]
pub struct FileApplied {
    /// False for a no-op (nothing written, nothing logged).
    pub changed: bool,
    /// The state after the change.
    pub state: PolicyState,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Handle on a store directory. Cheap to clone; holds no open file or lock between calls,
/// so any number of handles, threads and processes may use the same directory.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    dir: PathBuf,
}

/// Holds an flock until dropped (closing the file releases it).
struct LockGuard(#[allow(dead_code)] File);

impl PolicyStore {
    /// Opens (creating if needed, owner-only) the store directory. Does not read the state:
    /// a missing `policy.json` is the out-of-the-box state.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&dir).map_err(io_err("create", &dir))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.join(AUDIT_FILE)
    }

    /// The current state (shared lock while reading).
    pub fn load(&self) -> Result<PolicyState, StoreError> {
        let _lock = self.lock(false)?;
        self.read_state()
    }

    /// Applies one change: lock, read, apply, append the audit line, replace the state,
    /// unlock. A refused change (`ModelError`) leaves the store untouched.
    pub fn apply(&self, actor: &str, change: &Change) -> Result<FileApplied, PolicyError> {
        let _lock = self.lock(true)?;
        self.remove_stale_temp_files();
        let mut state = self.read_state()?;
        let outcome = state.apply_outcome(change)?;
        let changed = outcome.is_some();
        if let Some(o) = outcome {
            let (unix_ms, when) = now();
            let who = Actor::new(actor, "local-cli");
            let record = AuditRecord {
                revision: o.revision,
                when,
                unix_ms,
                actor: who.who,
                credential: who.credential,
                op: change.op().to_owned(),
                operation: serde_json::to_value(change).unwrap_or_default(),
                before: o.before,
                after: o.after,
            };
            self.append_audit(&record)?;
            self.write_state(&state)?;
        }
        Ok(FileApplied { changed, state })
    }

    /// Every audit record, oldest first. Lines that do not parse (a torn last line after a
    /// crash) are skipped.
    pub fn audit(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let _lock = self.lock(false)?;
        let path = self.audit_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable audit line");
                    None
                }
            })
            .collect())
    }

    fn read_state(&self) -> Result<PolicyState, StoreError> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PolicyState::default()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        parse_state(&bytes, &path)
    }

    /// Writes `state` as this directory's `policy.json` (atomically, as every change).
    pub fn save(&self, state: &PolicyState) -> Result<(), StoreError> {
        let _lock = self.lock(true)?;
        self.remove_stale_temp_files();
        self.write_state(state)
    }

    fn write_state(&self, state: &PolicyState) -> Result<(), StoreError> {
        let path = self.state_path();
        // Unique per process and instant; only one writer holds the lock anyway.
        let (ms, _) = now();
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}-{ms}", std::process::id()));
        let result = (|| {
            let mut json = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
                op: "serialize",
                path: tmp.clone(),
                source: io::Error::other(e),
            })?;
            json.push(b'\n');
            let mut f = create_private(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(&json).map_err(io_err("write", &tmp))?;
            // The data must be on disk before the rename makes it the state, or a crash
            // could leave a renamed but empty file.
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            drop(f);
            fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
            // The rename is only durable once the directory entry is.
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let path = self.audit_path();
        let existed = path.exists();
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut line = Vec::with_capacity(512);
        // A crash mid-append can leave a last line without its newline; start on a fresh
        // line so that torn line cannot swallow this record.
        let len = f.metadata().map_err(io_err("stat", &path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            f.seek(SeekFrom::Start(len - 1))
                .and_then(|_| f.read_exact(&mut last))
                .map_err(io_err("read", &path))?;
            if last[0] != b'\n' {
                line.push(b'\n');
            }
        }
        serde_json::to_writer(&mut line, record).map_err(|e| StoreError::Io {
            op: "serialize",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        // One write of the whole line: O_APPEND puts it at the end.
        f.write_all(&line).map_err(io_err("append to", &path))?;
        f.sync_data().map_err(io_err("fsync", &path))?;
        if !existed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Temp files left by a writer that crashed before its rename. Only called under the
    /// exclusive lock, when no other writer can have a temp file in flight.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    #[cfg(unix)]
    fn lock(&self, exclusive: bool) -> Result<LockGuard, StoreError> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Lock {
                path: path.clone(),
                source,
            })?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock takes a file descriptor we own (kept open by `f`, which the
            // guard holds until the lock is to be released) and an operation constant.
            let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(LockGuard(f));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::Lock { path, source: err });
            }
        }
    }

    #[cfg(not(unix))]
    fn lock(&self, _exclusive: bool) -> Result<LockGuard, StoreError> {
        Err(StoreError::Unsupported)
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Parses and validates a `policy.json` (the import format).
pub fn parse_state(bytes: &[u8], path: &Path) -> Result<PolicyState, StoreError> {
    let state: PolicyState = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        location: path.display().to_string(),
        detail: e.to_string(),
    })?;
    state.validate().map_err(|detail| StoreError::Corrupt {
        location: path.display().to_string(),
        detail,
    })?;
    Ok(state)
}

/// Current time as (unix milliseconds, RFC 3339 UTC string).
fn now() -> (u64, String) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = d.as_millis() as u64;
    (ms, rfc3339(ms))
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (proleptic Gregorian, UTC).
pub(crate) fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallingE2ee, PolicyName, GLOBAL};
    use duet_proto::{E2eeClaim, UserId};

    fn set_global(c: CallingE2ee) -> Change {
        Change::SetPolicy {
            name: PolicyName::new(GLOBAL).unwrap(),
            calling_e2ee: c,
        }
    }
    fn switch(user: &str, on: bool) -> Change {
        Change::SetUserE2ee {
            user: UserId::new(user).unwrap(),
            on,
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_763_890_000_000), "2025-11-23T09:26:40.000Z");
    }

    #[test]
    fn empty_store_is_out_of_the_box_and_reopen_sees_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path().join("policy")).unwrap();
        assert_eq!(store.load().unwrap(), PolicyState::default());
        assert!(store.audit().unwrap().is_empty());

        assert!(
            store
                .apply("test", &set_global(CallingE2ee::DisabledUserOverride))
                .unwrap()
                .changed
        );
        store.apply("test", &switch("alice", true)).unwrap();
        // A no-op is neither written nor logged.
        assert!(!store.apply("test", &switch("alice", true)).unwrap().changed);

        let reopened = PolicyStore::open(dir.path().join("policy")).unwrap();
        let s = reopened.load().unwrap();
        assert_eq!(s.revision, 2);
        assert_eq!(
            s.effective(&UserId::new("alice").unwrap()).claim,
            E2eeClaim::Allowed
        );
        let log = reopened.audit().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].op, "set_policy");
        assert_eq!(log[0].before["calling_e2ee"], "disabled");
        assert_eq!(log[0].after["calling_e2ee"], "disabled-user-override");
        assert_eq!(log[1].before["claim"], "user_not_enabled");
        assert_eq!(log[1].after["claim"], "allowed");
        assert_eq!(log[1].actor, "test");
        assert_eq!(log[1].revision, 2);
    }

    #[test]
    fn refused_change_leaves_store_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).unwrap();
        let err = store
            .apply(
                "t",
                &Change::RemovePolicy {
                    name: PolicyName::global(),
                    unassign: false,
                },
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::Model(_)));
        assert!(!store.state_path().exists());
        assert!(store.audit().unwrap().is_empty());
    }

    #[test]
    fn a_crash_before_the_rename_never_replaces_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).unwrap();
        store.apply("t", &switch("alice", true)).unwrap();
        let good = fs::read(store.state_path()).unwrap();
        // A writer that died mid-write leaves a half-written temp file behind.
        let tmp = dir.path().join(format!("{TMP_PREFIX}999-1"));
        fs::write(&tmp, b"{\"format\":1,\"revision\":99,\"polic").unwrap();
        assert_eq!(fs::read(store.state_path()).unwrap(), good);
        let s = store.load().unwrap();
        assert_eq!(s.revision, 1, "the temp file is never read");
        // The next writer removes it and carries on from the real state.
        store.apply("t", &switch("bob", true)).unwrap();
        assert!(!tmp.exists());
        let s = store.load().unwrap();
        assert_eq!(s.revision, 2);
        assert!(s.user(&UserId::new("alice").unwrap()).e2ee);
    }

    #[test]
    fn a_torn_audit_line_is_isolated_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).unwrap();
        store.apply("t", &switch("alice", true)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.audit_path())
            .unwrap();
        f.write_all(b"{\"when\":\"2025-").unwrap();
        drop(f);
        store.apply("t", &switch("bob", true)).unwrap();
        let log = store.audit().unwrap();
        assert_eq!(
            log.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_corrupt_state_file_is_reported_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).unwrap();
        fs::write(store.state_path(), b"not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        let err = store.apply("t", &switch("alice", true)).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(fs::read(store.state_path()).unwrap(), b"not json");
        // Well-formed JSON that breaks an invariant is corrupt too.
        fs::write(
            store.state_path(),
            br#"{"format":1,"revision":3,"policies":{}}"#,
        )
        .unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn concurrent_threads_lose_no_update() {
        const THREADS: usize = 6;
        const PER: usize = 15;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        PolicyStore::open(&path)
            .unwrap()
            .apply(
                "setup",
                &Change::SetPolicy {
                    name: PolicyName::new("Pilot").unwrap(),
                    calling_e2ee: CallingE2ee::DisabledUserOverride,
                },
            )
            .unwrap();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each thread opens its own handle: the lock is per open file, so
                    // threads contend exactly as processes do.
                    let store = PolicyStore::open(&path).unwrap();
                    for i in 0..PER {
                        store
                            .apply(
                                &format!("thread-{t}"),
                                &Change::GrantUser {
                                    user: UserId::new(format!("u{t}-{i}")).unwrap(),
                                    policy: Some(PolicyName::new("Pilot").unwrap()),
                                },
                            )
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let store = PolicyStore::open(&path).unwrap();
        let s = store.load().unwrap();
        let holders = s.view(&PolicyName::new("Pilot").unwrap()).unwrap().users;
        assert_eq!(holders.len(), THREADS * PER, "no grant was lost");
        assert_eq!(s.revision, (THREADS * PER + 1) as u64);
        let log = store.audit().unwrap();
        assert_eq!(log.len(), THREADS * PER + 1);
        // Revisions in the log are exactly 1..=N in order: no two writers interleaved.
        assert!(log
            .iter()
            .enumerate()
            .all(|(i, r)| r.revision == i as u64 + 1));
    }
}
