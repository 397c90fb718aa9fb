//! The keys' table in `<data_dir>/corral.db` (SQLite, through rusqlite with its bundled
//! library): what a restart must keep. The plaintext of a key is never written; only its
//! argon2id hash.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use super::AccessError;

/// The schema's version, in SQLite's `user_version`; a later Corral migrates from it.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    lookup TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    permission_mode TEXT NOT NULL CHECK (permission_mode IN ('allow_all', 'per_instance')),
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE TABLE IF NOT EXISTS api_key_instances (
    key_id INTEGER NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    instance_name TEXT NOT NULL,
    PRIMARY KEY (key_id, instance_name)
);
";

/// One stored key, as read back.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub id: u64,
    pub name: String,
    pub lookup: String,
    pub hash: String,
    pub per_instance: bool,
    pub instances: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

/// A key to store.
pub(super) struct NewRow<'a> {
    pub name: &'a str,
    pub lookup: &'a str,
    pub hash: &'a str,
    pub per_instance: bool,
    pub instances: &'a [String],
    pub expires_at: Option<i64>,
    pub now: i64,
}

pub(super) struct Db {
    path: PathBuf,
    conn: Connection,
}

impl Db {
    pub(super) fn open(path: &Path) -> Result<Self, AccessError> {
        let error = |source| AccessError::Database {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(error)?;
        // Only this user may read the hashes (the data folder is owner-only too).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(error)?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(error)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(error)?;
        if version > SCHEMA_VERSION {
            return Err(AccessError::NewerSchema {
                path: path.to_owned(),
                version,
            });
        }
        conn.execute_batch(SCHEMA).map_err(error)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(error)?;
        Ok(Self {
            path: path.to_owned(),
            conn,
        })
    }

    fn error(&self, source: rusqlite::Error) -> AccessError {
        AccessError::Database {
            path: self.path.clone(),
            source,
        }
    }

    pub(super) fn all(&self) -> Result<Vec<Row>, AccessError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT id, name, lookup, key_hash, permission_mode, expires_at, created_at, \
                 updated_at, last_used_at FROM api_keys ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Row {
                    id: row.get::<_, i64>(0)? as u64,
                    name: row.get(1)?,
                    lookup: row.get(2)?,
                    hash: row.get(3)?,
                    per_instance: row.get::<_, String>(4)? == "per_instance",
                    instances: Vec::new(),
                    expires_at: row.get(5)?,
                    created_at: row.get(6)?,
                    updated_at: row.get(7)?,
                    last_used_at: row.get(8)?,
                })
            })
            .map_err(|e| self.error(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))?;
        let mut instances = self
            .conn
            .prepare("SELECT key_id, instance_name FROM api_key_instances ORDER BY instance_name")
            .map_err(|e| self.error(e))?;
        let pairs = instances
            .query_map([], |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)))
            .map_err(|e| self.error(e))?
            .collect::<Result<Vec<(u64, String)>, _>>()
            .map_err(|e| self.error(e))?;
        let mut rows = rows;
        for (key, instance) in pairs {
            if let Some(row) = rows.iter_mut().find(|row| row.id == key) {
                row.instances.push(instance);
            }
        }
        Ok(rows)
    }

    pub(super) fn insert(&mut self, new: &NewRow<'_>) -> Result<u64, AccessError> {
        let path = self.path.clone();
        let error = |source| AccessError::Database {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(error)?;
        tx.execute(
            "INSERT INTO api_keys (name, lookup, key_hash, permission_mode, expires_at, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                new.name,
                new.lookup,
                new.hash,
                if new.per_instance {
                    "per_instance"
                } else {
                    "allow_all"
                },
                new.expires_at,
                new.now
            ],
        )
        .map_err(error)?;
        let id = tx.last_insert_rowid();
        for instance in new.instances {
            tx.execute(
                "INSERT OR IGNORE INTO api_key_instances (key_id, instance_name) VALUES (?1, ?2)",
                params![id, instance],
            )
            .map_err(error)?;
        }
        tx.commit().map_err(error)?;
        Ok(id as u64)
    }

    /// Whether a key with `id` was there to delete.
    pub(super) fn delete(&self, id: u64) -> Result<bool, AccessError> {
        self.conn
            .execute("DELETE FROM api_keys WHERE id = ?1", params![id as i64])
            .map(|deleted| deleted > 0)
            .map_err(|e| self.error(e))
    }

    pub(super) fn set_expiry(
        &self,
        id: u64,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<bool, AccessError> {
        self.conn
            .execute(
                "UPDATE api_keys SET expires_at = ?2, updated_at = ?3 WHERE id = ?1",
                params![id as i64, expires_at, now],
            )
            .map(|updated| updated > 0)
            .map_err(|e| self.error(e))
    }

    pub(super) fn touch(&self, id: u64, at: i64) -> Result<(), AccessError> {
        self.conn
            .execute(
                "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
                params![id as i64, at],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Drops `instance` from every key's scope: a later instance of the same name is another
    /// one, which no key was given.
    pub(super) fn forget_instance(&self, instance: &str) -> Result<(), AccessError> {
        self.conn
            .execute(
                "DELETE FROM api_key_instances WHERE instance_name = ?1",
                params![instance],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }
}
