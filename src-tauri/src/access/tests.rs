use super::*;

fn scoped(instances: &[&str]) -> Scope {
    Scope::Instances(instances.iter().map(|name| name.to_string()).collect())
}

fn new_key(name: &str, scope: Scope) -> NewKey {
    NewKey {
        name: name.into(),
        scope,
        expires_at: None,
    }
}

fn granted(check: KeyCheck) -> Arc<Grant> {
    match check {
        KeyCheck::Granted(grant) => grant,
        other => panic!("expected the key granted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_made_key_is_granted_at_once_and_after_a_restart_once_checked_against_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (view, key) = store.create(new_key("editor", scoped(&["a"]))).unwrap();
    assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
    assert!(view
        .prefix
        .starts_with(&key[..KEY_PREFIX.len() + LOOKUP_LEN]));
    assert!(!view.prefix.contains(&key[KEY_PREFIX.len() + LOOKUP_LEN..]));
    let grant = granted(store.check(key.as_bytes(), unix_now()));
    assert!(grant.allows("a") && !grant.allows("b"));
    drop(store);

    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    assert!(matches!(
        store.check(key.as_bytes(), unix_now()),
        KeyCheck::Unverified
    ));
    let grant = granted(store.verify(key.as_bytes()).await);
    assert_eq!(&*grant.name, "editor");
    // Verified once: the hot path grants it from now on.
    granted(store.check(key.as_bytes(), unix_now()));
}

#[tokio::test]
async fn a_wrong_secret_an_unknown_key_and_other_shapes_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (_, key) = store.create(new_key("k", Scope::AllowAll)).unwrap();
    let mut wrong = key.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
    assert!(matches!(store.check(&wrong, unix_now()), KeyCheck::Refused));
    let unknown = format!("{KEY_PREFIX}{}", "0".repeat(64));
    assert!(matches!(
        store.check(unknown.as_bytes(), unix_now()),
        KeyCheck::Refused
    ));
    for other in ["sk-management-abc", "secret", "", &key[..key.len() - 1]] {
        assert!(
            matches!(
                store.check(other.as_bytes(), unix_now()),
                KeyCheck::NotStored
            ),
            "{other}"
        );
    }
    // A wrong secret is refused against the hash too, after a restart.
    drop(store);
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    assert!(matches!(store.verify(&wrong).await, KeyCheck::Refused));
    granted(store.verify(key.as_bytes()).await);
}

#[tokio::test]
async fn an_expired_or_revoked_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (view, key) = store.create(new_key("k", Scope::AllowAll)).unwrap();
    granted(store.check(key.as_bytes(), unix_now()));
    let expired = store
        .set_expiry(view.id, Some(unix_now()))
        .unwrap()
        .unwrap();
    assert!(expired.expired);
    assert!(matches!(
        store.check(key.as_bytes(), unix_now()),
        KeyCheck::Refused
    ));
    store.set_expiry(view.id, None).unwrap().unwrap();
    granted(store.check(key.as_bytes(), unix_now()));
    assert!(store.delete(view.id).unwrap());
    assert!(!store.delete(view.id).unwrap());
    assert!(matches!(
        store.check(key.as_bytes(), unix_now()),
        KeyCheck::Refused
    ));
    drop(store);
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    assert!(store.list().is_empty());
    assert!(matches!(
        store.verify(key.as_bytes()).await,
        KeyCheck::Refused
    ));
}

#[test]
fn a_deleted_instance_leaves_every_scope_now_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (view, key) = store.create(new_key("k", scoped(&["a", "b"]))).unwrap();
    store.forget_instance("a").unwrap();
    let grant = granted(store.check(key.as_bytes(), unix_now()));
    assert!(!grant.allows("a") && grant.allows("b"));
    assert_eq!(store.get(view.id).unwrap().instance_ids, ["b"]);
    drop(store);
    // `b` was deleted while the engine was down.
    let store = KeyStore::open(dir.path(), |name| name != "b").unwrap();
    assert!(store.get(view.id).unwrap().instance_ids.is_empty());
    drop(store);
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    assert!(store.get(view.id).unwrap().instance_ids.is_empty());
}

#[test]
fn last_use_is_kept_in_memory_and_written_when_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (view, key) = store.create(new_key("k", Scope::AllowAll)).unwrap();
    assert_eq!(view.last_used_at, None);
    granted(store.check(key.as_bytes(), 1_900_000_000));
    assert_eq!(
        store.get(view.id).unwrap().last_used_at,
        Some(1_900_000_000)
    );
    store.flush_last_used().unwrap();
    drop(store);
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    assert_eq!(
        store.get(view.id).unwrap().last_used_at,
        Some(1_900_000_000)
    );
}

#[test]
fn the_database_holds_hashes_never_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (_, key) = store.create(new_key("k", Scope::AllowAll)).unwrap();
    drop(store);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let secret = &key[KEY_PREFIX.len() + LOOKUP_LEN..];
    assert!(!bytes
        .windows(secret.len())
        .any(|window| window == secret.as_bytes()));
    assert!(bytes.windows(9).any(|window| window == b"$argon2id"));
}

#[test]
fn a_database_from_a_newer_corral_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let error = KeyStore::open(dir.path(), |_| true).err().unwrap();
    assert!(matches!(
        error,
        AccessError::NewerSchema { version: 99, .. }
    ));
}

#[test]
fn the_caller_outside_an_auth_layer_may_use_nothing_and_a_keyed_one_is_held_to_its_scope() {
    assert!(!current_caller().may_use("anything"));
    assert!(Caller::unrestricted().may_use("anything"));
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), |_| true).unwrap();
    let (_, key) = store.create(new_key("team", scoped(&["a"]))).unwrap();
    let caller = Caller::keyed(granted(store.check(key.as_bytes(), unix_now())));
    assert!(caller.may_use("a") && !caller.may_use("b"));
    assert_eq!(caller.key_name().as_deref(), Some("team"));
}
