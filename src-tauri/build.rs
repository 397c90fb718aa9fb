//! Makes cargo rebuild the crate when the web UI's build (`ui/dist`, embedded by `api::ui`)
//! changes, and runs tauri-build for the desktop build. It never builds the UI itself:
//! `scripts/build-ui.sh` does (and `scripts/run.sh` calls it).
use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let ui = Path::new(&manifest).join("../ui");
    let dist = ui.join("dist");
    println!("cargo:rerun-if-changed=build.rs");
    // Cargo scans a directory recursively and re-runs this script (rebuilding the crate) when
    // anything in it changed. A missing path would count as changed on every build, so when
    // there is no dist yet the folder it will appear in is watched instead; without even `ui/`
    // there is nothing to watch.
    if dist.is_dir() {
        println!("cargo:rerun-if-changed={}", dist.display());
    } else if ui.is_dir() {
        println!("cargo:rerun-if-changed={}", ui.display());
    }
    #[cfg(feature = "desktop")]
    tauri_build::try_build(tauri_build::Attributes::new().config_path("../tauri.conf.json"))
        .unwrap_or_else(|e| panic!("tauri-build failed: {e:#}"));
}
