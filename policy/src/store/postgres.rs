//! The PostgreSQL store (feature `postgres`), for issuers that run replicated: several
//! backend instances minting and changing policy against one database.
//!
//! Owns connecting (the `postgres` crate: blocking, so call it from threads, e.g.
//! `spawn_blocking`, never from async code), the schema (created under an advisory lock so
//! two instances starting at once do not race), statement caching per connection, and
//! binding values. Write transactions lock the meta row (`SELECT … FOR UPDATE`) first:
//! writers from every instance are serialised, so revisions and audit records are a single
//! sequence and a read-check-write (a rank's uniqueness, a policy in use) cannot interleave
//! with another. Reads run in `REPEATABLE READ READ ONLY` transactions: one snapshot.

use std::collections::HashMap;
use std::error::Error as _;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::sql::{Backend, Sql, SqlStore, P, SCHEMA, V};
use super::StoreError;
use crate::PolicyError;

/// Any 64-bit key: serialises schema creation across instances.
const SCHEMA_LOCK: i64 = 0x6475_6574_706f_6c31;

#[derive(Debug)]
pub(crate) struct Pg {
    config: postgres::Config,
    described: String,
    schema: Option<String>,
}

pub(crate) struct PgConn {
    client: Client,
    cache: HashMap<&'static str, Statement>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgConn")
    }
}

fn db_err(e: postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match e.source() {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    StoreError::Database {
        backend: "postgres",
        detail,
    }
}

impl ToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            P::I(i) => i.to_sql(ty, out),
            P::T(s) => s.to_sql(ty, out),
            P::Null => Ok(IsNull::Yes),
        }
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::TEXT | Type::VARCHAR)
    }
    to_sql_checked!();
}

struct PgTx<'a> {
    tx: postgres::Transaction<'a>,
    cache: &'a mut HashMap<&'static str, Statement>,
}

impl PgTx<'_> {
    fn stmt(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(db_err)?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }
}

fn params<'a>(p: &'a [P<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    p.iter().map(|x| x as &(dyn ToSql + Sync)).collect()
}

impl Sql for PgTx<'_> {
    fn exec(&mut self, sql: &'static str, p: &[P<'_>]) -> Result<u64, StoreError> {
        let s = self.stmt(sql)?;
        self.tx.execute(&s, &params(p)).map_err(db_err)
    }

    fn query(&mut self, sql: &'static str, p: &[P<'_>]) -> Result<Vec<Vec<V>>, StoreError> {
        let s = self.stmt(sql)?;
        let rows = self.tx.query(&s, &params(p)).map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = Vec::with_capacity(row.len());
            for (i, col) in row.columns().iter().enumerate() {
                let v = if *col.type_() == Type::INT8 {
                    row.try_get::<_, Option<i64>>(i)
                        .map_err(db_err)?
                        .map_or(V::Null, V::I)
                } else if *col.type_() == Type::INT4 {
                    row.try_get::<_, Option<i32>>(i)
                        .map_err(db_err)?
                        .map_or(V::Null, |x| V::I(i64::from(x)))
                } else {
                    row.try_get::<_, Option<String>>(i)
                        .map_err(db_err)?
                        .map_or(V::Null, V::T)
                };
                r.push(v);
            }
            out.push(r);
        }
        Ok(out)
    }
}

impl Backend for Pg {
    type Conn = PgConn;

    fn describe(&self) -> String {
        self.described.clone()
    }

    fn connect(&self) -> Result<PgConn, StoreError> {
        let mut client = self.config.connect(NoTls).map_err(db_err)?;
        if let Some(schema) = &self.schema {
            // Quoted identifier; the schema name was checked to be [a-z0-9_].
            client
                .batch_execute(&format!("SET search_path TO \"{schema}\""))
                .map_err(db_err)?;
        }
        Ok(PgConn {
            client,
            cache: HashMap::new(),
        })
    }

    fn transact<T>(
        &self,
        conn: &mut PgConn,
        write: bool,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, PolicyError>,
    ) -> Result<T, PolicyError> {
        let mut b = conn.client.build_transaction();
        if !write {
            b = b
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true);
        }
        let tx = b.start().map_err(db_err)?;
        let mut t = PgTx {
            tx,
            cache: &mut conn.cache,
        };
        if write {
            t.query(
                "SELECT revision FROM duet_meta WHERE id = 1 FOR UPDATE",
                &[],
            )?;
        }
        let r = f(&mut t)?;
        t.tx.commit().map_err(db_err)?;
        Ok(r)
    }
}

/// The PostgreSQL policy store. Thread-safe; several processes may share one database.
#[derive(Debug)]
pub struct PostgresStore(SqlStore<Pg>);

impl PostgresStore {
    /// Connects to `dsn` (`postgres://user@host:port/db`, libpq key=value also accepted)
    /// and creates the schema if missing.
    pub fn open(dsn: &str) -> Result<Self, StoreError> {
        Self::open_in_schema(dsn, None)
    }

    /// As [`open`](Self::open), with every table in the PostgreSQL schema `schema`
    /// (created if missing; lowercase letters, digits and `_`), e.g. one per tenant or test.
    pub fn open_in_schema(dsn: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let config: postgres::Config = dsn.parse().map_err(|e: postgres::Error| {
            StoreError::Locator(format!("bad PostgreSQL DSN: {e}"))
        })?;
        if let Some(s) = schema {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(StoreError::Locator(format!(
                    "schema {s:?}: use lowercase letters, digits and _"
                )));
            }
        }
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                postgres::config::Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_default();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or("").to_owned();
        let described = match schema {
            Some(s) => format!("postgres://{host}:{port}/{db} (schema {s})"),
            None => format!("postgres://{host}:{port}/{db}"),
        };
        let b = Pg {
            config,
            described,
            schema: schema.map(str::to_owned),
        };
        let mut conn = {
            let mut client = b.config.connect(NoTls).map_err(db_err)?;
            let mut tx = client.transaction().map_err(db_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .map_err(db_err)?;
            if let Some(s) = schema {
                tx.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{s}\"; SET LOCAL search_path TO \"{s}\""
                ))
                .map_err(db_err)?;
            }
            for stmt in SCHEMA {
                tx.batch_execute(stmt).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            drop(client);
            b.connect()?
        };
        conn.cache.clear();
        Ok(Self(SqlStore::new(b, conn)))
    }

    /// Drops the schema this store was opened in, with every table (test clean-up).
    pub fn drop_schema(self) -> Result<(), StoreError> {
        let Some(schema) = self.0.backend.schema.clone() else {
            return Ok(());
        };
        let mut c = self.0.backend.config.connect(NoTls).map_err(db_err)?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .map_err(db_err)
    }
}

super::sql::forward_store!(PostgresStore);
