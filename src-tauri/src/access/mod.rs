//! Inference keys with a scope (llamactl 0.13+'s `/api/v1/auth/keys`): made through the
//! management API, stored as argon2id hashes in `<data_dir>/corral.db`, each allowed every
//! instance or a list of them. The keys in the config keep working beside them, unscoped.
//!
//! A key looks like the generated config keys, `sk-inference-` and 64 hex digits. The first 16
//! digits name its row (they are not secret); the hash covers the whole key. Checking a key
//! against its argon2id hash costs tens of milliseconds by design, far too much per request:
//! a key is checked against its hash once, when the engine first sees it (or made it), and
//! from then on compared in constant time with the copy kept in memory, as the config's keys
//! are. The hot path so takes a read lock, a hash map lookup by the 16 digits and one
//! comparison, without allocating.

mod db;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use db::{Db, NewRow};

/// What every stored key starts with (the prefix llamactl gives inference keys).
pub const KEY_PREFIX: &str = "sk-inference-";
/// The hex digits after the prefix that name the key's row.
const LOOKUP_LEN: usize = 16;
/// The secret hex digits after those.
const SECRET_LEN: usize = 48;
/// The database file in the data folder.
pub const DB_FILE: &str = "corral.db";
/// Longest key name.
pub const MAX_NAME_LEN: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the keys database {path}: {source}")]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the keys database {path} was written by a newer Corral (schema {version}); \
         run that version, or move the file away to start without stored keys"
    )]
    NewerSchema { path: PathBuf, version: i64 },
    #[error("cannot hash the key: {0}")]
    Hash(String),
}

/// Which instances a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllowAll,
    Instances(BTreeSet<String>),
}

/// llamactl's name for a key's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PermissionMode {
    AllowAll,
    PerInstance,
}

/// A stored key as the engine holds it: who it is and what it may do.
#[derive(Debug)]
pub struct Grant {
    pub id: u64,
    pub name: Arc<str>,
    pub scope: Scope,
    pub expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    lookup: String,
    /// Unix seconds of the last request made with it; 0 when never.
    last_used: AtomicI64,
    /// What the database holds of `last_used`.
    stored_last_used: AtomicI64,
}

impl Grant {
    /// Whether the key may use `instance`.
    pub fn allows(&self, instance: &str) -> bool {
        match &self.scope {
            Scope::AllowAll => true,
            Scope::Instances(instances) => instances.contains(instance),
        }
    }

    /// This grant with another scope or expiry, its use so far kept.
    fn changed(&self, scope: Scope, expires_at: Option<i64>, updated_at: i64) -> Grant {
        Grant {
            id: self.id,
            name: Arc::clone(&self.name),
            scope,
            expires_at,
            created_at: self.created_at,
            updated_at,
            lookup: self.lookup.clone(),
            last_used: AtomicI64::new(self.last_used.load(Ordering::Relaxed)),
            stored_last_used: AtomicI64::new(self.stored_last_used.load(Ordering::Relaxed)),
        }
    }

    fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn view(&self, now: i64) -> ApiKey {
        let last_used = self.last_used.load(Ordering::Relaxed);
        let (permission_mode, instance_ids) = match &self.scope {
            Scope::AllowAll => (PermissionMode::AllowAll, Vec::new()),
            Scope::Instances(instances) => (
                PermissionMode::PerInstance,
                instances.iter().cloned().collect(),
            ),
        };
        ApiKey {
            id: self.id,
            name: self.name.to_string(),
            user_id: String::new(),
            permission_mode,
            expires_at: self.expires_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_used_at: (last_used > 0).then_some(last_used),
            instance_ids,
            prefix: format!("{KEY_PREFIX}{}…", self.lookup),
            expired: self.expired(now),
        }
    }
}

/// A stored key in the API (llamactl's `ApiKey`, with Corral's additions).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: u64,
    pub name: String,
    /// Always empty: Corral has no users. Kept for llamactl's clients.
    pub user_id: String,
    pub permission_mode: PermissionMode,
    /// Unix seconds after which the key is refused; none: it never expires.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Unix seconds of the last request made with it (written to disk every 30 s).
    pub last_used_at: Option<i64>,
    /// The instances a `per_instance` key may use (Corral names instances; llamactl numbers
    /// them).
    pub instance_ids: Vec<String>,
    /// The key's first characters, to tell keys apart: never the secret part.
    pub prefix: String,
    /// Past its `expires_at`.
    pub expired: bool,
}

/// A key to make.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub scope: Scope,
    pub expires_at: Option<i64>,
}

/// What a presented key is to the store.
#[derive(Debug)]
pub enum KeyCheck {
    /// Not the shape of a stored key: the caller's other keys may know it.
    NotStored,
    Granted(Arc<Grant>),
    /// A stored key's shape, but no such key, a wrong one, or expired.
    Refused,
    /// A stored key not yet checked against its hash since the engine started: `verify` can.
    Unverified,
}

struct Entry {
    grant: Arc<Grant>,
    hash: Arc<str>,
    /// The key itself, once it has matched `hash`.
    verified: Option<Box<[u8]>>,
}

/// The stored keys: the database and what of it the engine holds in memory.
pub struct KeyStore {
    db: Mutex<Db>,
    keys: RwLock<HashMap<[u8; LOOKUP_LEN], Entry>>,
    /// One hash check at a time: each costs a core for tens of milliseconds, and a client
    /// sending made-up keys must not take them all.
    verifying: tokio::sync::Semaphore,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The connection holds no state of ours a panic could leave halfway.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// The row-naming digits of a key of the stored keys' shape.
fn lookup_of(key: &[u8]) -> Option<[u8; LOOKUP_LEN]> {
    let rest = key.strip_prefix(KEY_PREFIX.as_bytes())?;
    if rest.len() != LOOKUP_LEN + SECRET_LEN
        || !rest
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    rest[..LOOKUP_LEN].try_into().ok()
}

fn argon2() -> argon2::Argon2<'static> {
    // The crate's defaults are OWASP's argon2id recommendation (19 MiB, 2 passes, 1 lane).
    argon2::Argon2::default()
}

fn hash_key(key: &str) -> Result<String, AccessError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| AccessError::Hash(e.to_string()))?;
    argon2()
        .hash_password(key.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccessError::Hash(e.to_string()))
}

fn matches_hash(key: &[u8], hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| argon2().verify_password(key, &parsed).is_ok())
}

impl KeyStore {
    /// Opens (or creates) `<data_dir>/corral.db` and loads its keys; `exists` says which
    /// instances are defined, and a key's scope loses those that are not (deleted while the
    /// engine was down).
    pub fn open(data_dir: &Path, exists: impl Fn(&str) -> bool) -> Result<Arc<Self>, AccessError> {
        let db = Db::open(&data_dir.join(DB_FILE))?;
        let rows = db.all()?;
        let mut keys = HashMap::new();
        for mut row in rows {
            let gone: Vec<String> = row
                .instances
                .iter()
                .filter(|instance| !exists(instance))
                .cloned()
                .collect();
            for instance in &gone {
                db.forget_instance(instance)?;
            }
            row.instances.retain(|instance| !gone.contains(instance));
            let Ok(lookup) = <[u8; LOOKUP_LEN]>::try_from(row.lookup.as_bytes()) else {
                tracing::warn!(
                    id = row.id,
                    "a stored key with a malformed lookup is skipped"
                );
                continue;
            };
            let scope = if row.per_instance {
                Scope::Instances(row.instances.into_iter().collect())
            } else {
                Scope::AllowAll
            };
            let last_used = row.last_used_at.unwrap_or(0);
            keys.insert(
                lookup,
                Entry {
                    grant: Arc::new(Grant {
                        id: row.id,
                        name: row.name.into(),
                        scope,
                        expires_at: row.expires_at,
                        created_at: row.created_at,
                        updated_at: row.updated_at,
                        lookup: row.lookup,
                        last_used: AtomicI64::new(last_used),
                        stored_last_used: AtomicI64::new(last_used),
                    }),
                    hash: row.hash.into(),
                    verified: None,
                },
            );
        }
        Ok(Arc::new(Self {
            db: Mutex::new(db),
            keys: RwLock::new(keys),
            verifying: tokio::sync::Semaphore::new(1),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; LOOKUP_LEN], Entry>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; LOOKUP_LEN], Entry>> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether any key is stored (none: the hot path skips the store).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The hot path's check: never hashes, never allocates. A stored key not yet verified
    /// since the engine started answers `Unverified`, for [`KeyStore::verify`].
    pub fn check(&self, key: &[u8], now: i64) -> KeyCheck {
        let Some(lookup) = lookup_of(key) else {
            return KeyCheck::NotStored;
        };
        let keys = self.read();
        let Some(entry) = keys.get(&lookup) else {
            return KeyCheck::Refused;
        };
        let Some(verified) = &entry.verified else {
            return KeyCheck::Unverified;
        };
        if !bool::from(verified.as_ref().ct_eq(key)) || entry.grant.expired(now) {
            return KeyCheck::Refused;
        }
        entry.grant.last_used.store(now, Ordering::Relaxed);
        KeyCheck::Granted(Arc::clone(&entry.grant))
    }

    /// `check`, checking an unverified key against its hash (one at a time, off the async
    /// threads).
    pub async fn verify(&self, key: &[u8]) -> KeyCheck {
        let now = unix_now();
        match self.check(key, now) {
            KeyCheck::Unverified => {}
            other => return other,
        }
        let Ok(_turn) = self.verifying.acquire().await else {
            return KeyCheck::Refused;
        };
        // Another request may have verified it while this one waited.
        let Some(lookup) = lookup_of(key) else {
            return KeyCheck::NotStored;
        };
        let hash = match self.read().get(&lookup) {
            None => return KeyCheck::Refused,
            Some(entry) if entry.verified.is_some() => return self.check(key, now),
            Some(entry) => Arc::clone(&entry.hash),
        };
        let presented = key.to_vec();
        let matched = tokio::task::spawn_blocking(move || {
            matches_hash(&presented, &hash).then_some(presented)
        })
        .await
        .ok()
        .flatten();
        let Some(presented) = matched else {
            return KeyCheck::Refused;
        };
        if let Some(entry) = self.write().get_mut(&lookup) {
            entry.verified = Some(presented.into_boxed_slice());
        }
        self.check(key, now)
    }

    /// Makes a key: the plaintext is in the answer and nowhere else. Hashing takes tens of
    /// milliseconds: call it off the async threads.
    pub fn create(&self, new: NewKey) -> Result<(ApiKey, String), AccessError> {
        let now = unix_now();
        let (lookup, key) = loop {
            let lookup = hex::encode(rand::random::<[u8; LOOKUP_LEN / 2]>());
            let secret = hex::encode(rand::random::<[u8; SECRET_LEN / 2]>());
            let Ok(digits) = <[u8; LOOKUP_LEN]>::try_from(lookup.as_bytes()) else {
                continue;
            };
            if !self.read().contains_key(&digits) {
                let key = format!("{KEY_PREFIX}{lookup}{secret}");
                break (lookup, key);
            }
        };
        let hash = hash_key(&key)?;
        let instances: Vec<String> = match &new.scope {
            Scope::AllowAll => Vec::new(),
            Scope::Instances(instances) => instances.iter().cloned().collect(),
        };
        let id = lock(&self.db).insert(&NewRow {
            name: &new.name,
            lookup: &lookup,
            hash: &hash,
            per_instance: matches!(new.scope, Scope::Instances(_)),
            instances: &instances,
            expires_at: new.expires_at,
            now,
        })?;
        let grant = Arc::new(Grant {
            id,
            name: new.name.into(),
            scope: new.scope,
            expires_at: new.expires_at,
            created_at: now,
            updated_at: now,
            lookup: lookup.clone(),
            last_used: AtomicI64::new(0),
            stored_last_used: AtomicI64::new(0),
        });
        let view = grant.view(now);
        let mut digits = [0u8; LOOKUP_LEN];
        digits.copy_from_slice(lookup.as_bytes());
        self.write().insert(
            digits,
            Entry {
                grant,
                hash: hash.into(),
                verified: Some(key.as_bytes().into()),
            },
        );
        Ok((view, key))
    }

    /// Every stored key, oldest first.
    pub fn list(&self) -> Vec<ApiKey> {
        let now = unix_now();
        let mut keys: Vec<ApiKey> = self
            .read()
            .values()
            .map(|entry| entry.grant.view(now))
            .collect();
        keys.sort_by_key(|key| key.id);
        keys
    }

    pub fn get(&self, id: u64) -> Option<ApiKey> {
        let now = unix_now();
        self.read()
            .values()
            .find(|entry| entry.grant.id == id)
            .map(|entry| entry.grant.view(now))
    }

    /// Revokes a key at once; whether there was one.
    pub fn delete(&self, id: u64) -> Result<bool, AccessError> {
        let deleted = lock(&self.db).delete(id)?;
        self.write().retain(|_, entry| entry.grant.id != id);
        Ok(deleted)
    }

    /// Sets when a key expires (now: expire it; none: never); the key, if there is one.
    pub fn set_expiry(
        &self,
        id: u64,
        expires_at: Option<i64>,
    ) -> Result<Option<ApiKey>, AccessError> {
        let now = unix_now();
        if !lock(&self.db).set_expiry(id, expires_at, now)? {
            return Ok(None);
        }
        let mut keys = self.write();
        let Some(entry) = keys.values_mut().find(|entry| entry.grant.id == id) else {
            return Ok(None);
        };
        let scope = entry.grant.scope.clone();
        entry.grant = Arc::new(entry.grant.changed(scope, expires_at, now));
        Ok(Some(entry.grant.view(now)))
    }

    /// Takes a deleted instance out of every key's scope, so that a new instance given its
    /// name is not open to keys made for the old one.
    pub fn forget_instance(&self, instance: &str) -> Result<(), AccessError> {
        self.forget_in_memory(instance);
        lock(&self.db).forget_instance(instance)
    }

    fn forget_in_memory(&self, instance: &str) {
        let mut keys = self.write();
        for entry in keys.values_mut() {
            let Scope::Instances(instances) = &entry.grant.scope else {
                continue;
            };
            if !instances.contains(instance) {
                continue;
            }
            let mut kept = instances.clone();
            kept.remove(instance);
            let old = &entry.grant;
            entry.grant =
                Arc::new(old.changed(Scope::Instances(kept), old.expires_at, old.updated_at));
        }
    }

    /// Writes the keys' last-use times that changed since the last call (the hot path only
    /// touches memory).
    pub fn flush_last_used(&self) -> Result<(), AccessError> {
        let changed: Vec<(u64, i64, Arc<Grant>)> = self
            .read()
            .values()
            .filter_map(|entry| {
                let used = entry.grant.last_used.load(Ordering::Relaxed);
                (used > entry.grant.stored_last_used.load(Ordering::Relaxed))
                    .then(|| (entry.grant.id, used, Arc::clone(&entry.grant)))
            })
            .collect();
        let db = lock(&self.db);
        for (id, used, grant) in changed {
            db.touch(id, used)?;
            grant.stored_last_used.store(used, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Who is making the request being answered, as the inference routes' auth found: a stored
/// key's grant, or no limit (a config key, or auth off).
#[derive(Debug, Clone)]
pub struct Caller(Reach);

#[derive(Debug, Clone)]
enum Reach {
    Unrestricted,
    Keyed(Arc<Grant>),
    /// No auth layer said who calls: a route mounted outside one. It may use nothing, so such
    /// a mistake closes the route instead of opening every instance to every key.
    Unknown,
}

impl Caller {
    pub fn unrestricted() -> Self {
        Self(Reach::Unrestricted)
    }

    pub fn keyed(grant: Arc<Grant>) -> Self {
        Self(Reach::Keyed(grant))
    }

    /// Whether the caller may use `instance`.
    pub fn may_use(&self, instance: &str) -> bool {
        match &self.0 {
            Reach::Unrestricted => true,
            Reach::Keyed(grant) => grant.allows(instance),
            Reach::Unknown => false,
        }
    }

    /// The stored key's name, for the activity log.
    pub fn key_name(&self) -> Option<String> {
        match &self.0 {
            Reach::Keyed(grant) => Some(grant.name.to_string()),
            Reach::Unrestricted | Reach::Unknown => None,
        }
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `answer` as the answer to a request from `caller`.
pub async fn calling<F: std::future::Future>(caller: Caller, answer: F) -> F::Output {
    CALLER.scope(caller, answer).await
}

/// The caller of the request being answered, as the inference auth layer set it. Without one
/// (a route mounted outside the layer, a task spawned without passing the caller on) it may use
/// no instance.
pub fn current_caller() -> Caller {
    CALLER.try_with(Clone::clone).unwrap_or_else(|_| {
        tracing::error!("an inference route ran without its auth layer; it may use no instance");
        Caller(Reach::Unknown)
    })
}

#[cfg(test)]
mod tests;
