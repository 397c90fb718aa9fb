//! Runs tauri-build only for the desktop build; the headless engine needs nothing generated.
fn main() {
    #[cfg(feature = "desktop")]
    tauri_build::try_build(tauri_build::Attributes::new().config_path("../tauri.conf.json"))
        .unwrap_or_else(|e| panic!("tauri-build failed: {e:#}"));
}
