//! What checking a stored inference key costs a request on the fast path: `KeyStore::check`
//! (the lookup by the key's row digits and the constant-time comparison) with 100 stored keys,
//! beside the config keys' comparison the fast path made before, and the one-time argon2id
//! check a key gets on its first use after a restart.
//! `cargo bench -p corral --no-default-features --bench keys`; prints a table.

use std::time::{Duration, Instant};

use corral::access::{unix_now, KeyCheck, KeyStore, NewKey, Scope};

const KEYS: usize = 100;
const CHECKS: usize = 200_000;
const ROUNDS: usize = 7;

/// Nanoseconds per call of `f`, the median of `ROUNDS` rounds of `CHECKS` calls.
fn per_call(mut f: impl FnMut() -> bool) -> f64 {
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CHECKS {
                assert!(std::hint::black_box(f()));
            }
            start.elapsed()
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2].as_nanos() as f64 / CHECKS as f64
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = KeyStore::open(dir.path(), |_| true).expect("key store");
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let scope = Scope::Instances([format!("model-{i}")].into_iter().collect());
        let (_, key) = store
            .create(NewKey {
                name: format!("key-{i}"),
                scope,
                expires_at: None,
            })
            .expect("key made");
        keys.push(key);
    }
    let key = keys[KEYS / 2].clone().into_bytes();
    let now = unix_now();
    let stored = per_call(|| matches!(store.check(&key, now), KeyCheck::Granted(_)));
    let with_clock = per_call(|| matches!(store.check(&key, unix_now()), KeyCheck::Granted(_)));
    let config_keys: Vec<String> = (0..2)
        .map(|i| format!("sk-inference-config-{i:060}"))
        .collect();
    let presented = config_keys[1].clone().into_bytes();
    let config = per_call(|| {
        use subtle::ConstantTimeEq;
        config_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, candidate| {
                found | candidate.as_bytes().ct_eq(&presented)
            })
            .into()
    });
    drop(store);
    // After a restart: the first use of each key is checked against its argon2id hash.
    let store = KeyStore::open(dir.path(), |_| true).expect("key store");
    let mut first = Vec::new();
    for key in keys.iter().take(5) {
        let start = Instant::now();
        assert!(matches!(
            store.verify(key.as_bytes()).await,
            KeyCheck::Granted(_)
        ));
        first.push(start.elapsed());
    }
    first.sort();
    println!("| check | per request |");
    println!("|---|---|");
    println!("| stored key, `KeyStore::check` ({KEYS} keys) | {stored:.0} ns |");
    println!("| the same, with the clock read per call | {with_clock:.0} ns |");
    println!("| two config keys, constant-time compare (before) | {config:.0} ns |");
    println!(
        "| first use after a restart (argon2id, once per key) | {:.1} ms |",
        first[first.len() / 2].as_secs_f64() * 1e3
    );
}
