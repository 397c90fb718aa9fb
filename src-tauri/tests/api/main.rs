//! The management API over a real listener, with `tests/fixtures/fake_backend.py` as the backend.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../common/mod.rs"]
mod common;

mod access;
mod documents;
mod events;
mod instances;
mod logs;
mod persistence;
mod proxy;
mod ui;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|instance| instance["name"].as_str().unwrap())
        .collect()
}
