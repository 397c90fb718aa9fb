//! mlx-lm into a virtualenv of Corral's own: `<data_dir>/backends/mlx-lm/venv`.

use std::path::{Path, PathBuf};

use super::run::Ctx;
use super::InstallError;

/// The versions the test suite runs (scripts/test-backends-py.sh pins the same).
const MLX_LM: &str = "mlx-lm==0.32.2";
/// On Linux mlx runs on its CPU device; its Metal build is the Mac's default.
const MLX_CPU: &str = "mlx[cpu]==0.32.4";

/// What pip installs on `os`.
pub(super) fn packages(os: &str) -> Vec<&'static str> {
    if os == "macos" {
        vec![MLX_LM]
    } else {
        vec![MLX_CPU, MLX_LM]
    }
}

fn venv(dir: &Path) -> PathBuf {
    dir.join("venv")
}

/// Creates the virtualenv, installs mlx-lm into it, and checks that `mlx_lm.server` runs;
/// answers its path.
pub(super) async fn install(ctx: &Ctx, dir: &Path) -> Result<PathBuf, InstallError> {
    let python = ctx.python().await?;
    let venv = venv(dir);
    // A folder left by an install that did not finish (Corral was killed during it).
    clean_up(dir)?;
    ctx.venv_with(
        ("creating the virtualenv", "installing mlx-lm"),
        &python,
        &venv,
        &packages(std::env::consts::OS),
    )
    .await?;
    let server = venv.join("bin/mlx_lm.server");
    // `--help` imports mlx_lm and mlx: a broken wheel fails here, not at the first start.
    ctx.run(
        "checking mlx_lm.server",
        &server,
        &["--help".into()],
        &[],
        None,
    )
    .await?;
    Ok(server)
}

/// Removes the virtualenv of an install that did not complete: a half one is of no use.
pub(super) fn clean_up(dir: &Path) -> Result<(), InstallError> {
    let venv = venv(dir);
    match std::fs::remove_dir_all(&venv) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InstallError::Io {
            what: format!("cannot remove {}", venv.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_gets_mlx_for_the_cpu_and_the_mac_plain_mlx_lm() {
        assert_eq!(packages("linux"), ["mlx[cpu]==0.32.4", "mlx-lm==0.32.2"]);
        assert_eq!(packages("macos"), ["mlx-lm==0.32.2"]);
    }
}
