//! Shared settings of the property tests (`proptest`).
//!
//! Each property runs a small, fixed number of cases by default, so `cargo test` stays fast on a
//! 2-core machine; `PROPTEST_CASES=100000 cargo test ...` runs longer on demand. A failing case is
//! not written to a regressions file: it is kept as a plain unit test beside the fix instead.

use proptest::test_runner::Config;

/// `default_cases` cases, or `PROPTEST_CASES` when set.
pub(crate) fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.trim().parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
