//! The embedded store: one SQLite file (`<data dir>/policy/policy.db`), WAL mode.
//!
//! Owns opening the file (creating the schema, or falling back to read-only when the file
//! or its directory cannot be written), SQLite's settings, and binding values. WAL lets
//! readers (minting) run while a writer commits; `synchronous=FULL` fsyncs the WAL at every
//! commit so an acknowledged change survives a power loss, as the file store did; writers
//! take SQLite's write lock at `BEGIN IMMEDIATE` and wait for it up to the busy timeout,
//! so two processes (the CLI and an API server) never lose each other's updates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::sql::{Backend, Sql, SqlStore, P, SCHEMA, V};
use super::StoreError;
use crate::model::UserRecord;
use crate::PolicyError;
use duet_proto::UserId;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Sqlite {
    path: PathBuf,
    read_only: bool,
    /// Test hook: `PRAGMA max_page_count` on every connection (a "full disk").
    max_pages: Option<u64>,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database {
        backend: "sqlite",
        detail: e.to_string(),
    }
}

fn is_read_only_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::PermissionDenied
        )
    )
}

impl Sqlite {
    /// A failure to begin or commit a transaction: a read-only file is its own error.
    fn tx_err(&self, e: rusqlite::Error) -> StoreError {
        if is_read_only_error(&e) {
            StoreError::ReadOnly {
                location: self.describe(),
            }
        } else {
            db_err(e)
        }
    }

    fn open_conn(&self) -> Result<Connection, StoreError> {
        let flags = if self.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(&self.path, flags).map_err(db_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Reads of a large store go through the OS page cache, shared by every connection
        // and process, instead of each connection's small private cache.
        conn.pragma_update(None, "mmap_size", 1i64 << 30)
            .map_err(db_err)?;
        conn.pragma_update(None, "cache_size", -16_384i64)
            .map_err(db_err)?;
        if !self.read_only {
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
                .map_err(db_err)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(db_err)?;
        }
        if let Some(pages) = self.max_pages {
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(db_err)?;
        }
        Ok(conn)
    }
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, params: &[P<'_>]) -> Result<(), StoreError> {
    for (i, p) in params.iter().enumerate() {
        let v = match p {
            P::I(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            P::T(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            P::Null => ToSqlOutput::Borrowed(ValueRef::Null),
        };
        stmt.raw_bind_parameter(i + 1, v).map_err(db_err)?;
    }
    Ok(())
}

/// `$N` to SQLite's `?N` (explicitly numbered parameters).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Sql for SqliteTx<'_> {
    fn exec(&mut self, sql: &'static str, params: &[P<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(&sqlite_sql(sql)).map_err(db_err)?;
        bind(&mut stmt, params)?;
        Ok(stmt.raw_execute().map_err(db_err)? as u64)
    }

    fn query(&mut self, sql: &'static str, params: &[P<'_>]) -> Result<Vec<Vec<V>>, StoreError> {
        let mut stmt = self.0.prepare_cached(&sqlite_sql(sql)).map_err(db_err)?;
        bind(&mut stmt, params)?;
        let n = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db_err)? {
            let mut r = Vec::with_capacity(n);
            for i in 0..n {
                r.push(match row.get_ref(i).map_err(db_err)? {
                    ValueRef::Integer(i) => V::I(i),
                    ValueRef::Text(t) => V::T(String::from_utf8_lossy(t).into_owned()),
                    _ => V::Null,
                });
            }
            out.push(r);
        }
        Ok(out)
    }
}

impl Backend for Sqlite {
    type Conn = Connection;

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        self.open_conn()
    }

    fn transact<T>(
        &self,
        conn: &mut Connection,
        write: bool,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, PolicyError>,
    ) -> Result<T, PolicyError> {
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(|e| self.tx_err(e))?;
        let mut t = SqliteTx(tx);
        let r = f(&mut t)?;
        // Dropping an uncommitted transaction (the `?` above) rolls it back.
        t.0.commit().map_err(|e| self.tx_err(e))?;
        Ok(r)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// The embedded policy store. Cheap to share (`Arc`); thread-safe; any number of
/// processes may open the same file.
#[derive(Debug)]
pub struct SqliteStore(SqlStore<Sqlite>);

impl SqliteStore {
    /// Opens (creating if needed, owner-only directory) the database file `path`. If the
    /// file exists but cannot be opened for writing (read-only media or permissions), the
    /// store opens read-only: reads and minting work, changes fail with
    /// [`StoreError::ReadOnly`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path.into(), None, true)
    }

    /// As [`open`](Self::open), also when the directory still holds an older version's
    /// `policy.json` (the import that migrates it).
    pub fn open_migrating(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path.into(), None, false)
    }

    /// Opens an existing database read-only (a replica, a snapshot, read-only media).
    pub fn open_read_only(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let b = Sqlite {
            path: path.into(),
            read_only: true,
            max_pages: None,
        };
        let conn = b.open_conn()?;
        Ok(Self(SqlStore::new(b, conn)))
    }

    /// Test hook: caps the database at `pages` pages (4 KiB each), so a write that needs
    /// more fails with "database or disk is full", as on a full disk.
    #[doc(hidden)]
    pub fn open_with_max_pages(path: impl Into<PathBuf>, pages: u64) -> Result<Self, StoreError> {
        Self::open_with(path.into(), Some(pages), true)
    }

    fn open_with(
        path: PathBuf,
        max_pages: Option<u64>,
        check_legacy: bool,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let legacy = dir.join(crate::file_store::STATE_FILE);
            if check_legacy && !path.exists() && legacy.exists() {
                return Err(StoreError::NeedsImport {
                    dir: dir.to_owned(),
                    json: legacy,
                });
            }
            if !dir.exists() {
                create_private_dir(dir)?;
            }
        }
        let b = Sqlite {
            path,
            read_only: false,
            max_pages,
        };
        let conn = match b.open_conn().and_then(|c| create_schema(&c).map(|()| c)) {
            Ok(c) => c,
            Err(e) if b.path.exists() => {
                // The file is there but cannot be written: serve it read-only.
                tracing::warn!(path = %b.path.display(), error = %e, "policy store opened read-only");
                return Self::open_read_only(b.path);
            }
            Err(e) => return Err(e),
        };
        Ok(Self(SqlStore::new(b, conn)))
    }

    /// Benchmark and migration fixture: inserts (or replaces) user records in batched
    /// transactions of `batch` users, bypassing the rules and the audit log. The records
    /// must name existing policies. Not for administration: changes go through
    /// [`Store::apply`](super::Store::apply).
    #[doc(hidden)]
    pub fn seed_users(
        &self,
        users: &[(UserId, UserRecord)],
        batch: usize,
    ) -> Result<(), PolicyError> {
        for chunk in users.chunks(batch.max(1)) {
            self.0.with_write(|sql| {
                for (u, rec) in chunk {
                    let mut tx = super::sql::SqlTx(sql);
                    let old = crate::engine::Tx::user(&mut tx, u)?;
                    crate::engine::Tx::put_user(&mut tx, u, old.as_ref(), rec)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.0.backend.path
    }

    pub fn is_read_only(&self) -> bool {
        self.0.backend.read_only
    }
}

fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    let mut batch = String::from("BEGIN IMMEDIATE;\n");
    for s in SCHEMA {
        batch.push_str(s);
        batch.push_str(";\n");
    }
    batch.push_str("COMMIT;");
    conn.execute_batch(&batch).map_err(db_err)
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|source| StoreError::Io {
        op: "create",
        path: dir.to_owned(),
        source,
    })
}

super::sql::forward_store!(SqliteStore);
