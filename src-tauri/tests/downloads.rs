//! Model downloads against a local fake Hugging Face (`common::fake_hub`), through a real
//! `corral serve` with `HF_ENDPOINT` and `HF_HUB_CACHE` pointing at temporary places: the files a
//! tag picks, the cache layout, progress events, resume after a cut, a cancel and a crash, the
//! hash check, hostile names, and deletion.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::binary::Corral;
use common::fake_hub::{FakeFile, FakeHub, FakeRepo};
use common::{SseReader, MANAGEMENT_KEY};
use reqwest::Method;
use serde_json::{json, Value};

const GGUF: &str = "org/model-GGUF";
const PART_1: &str = "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf";
const PART_2: &str = "Q4_K_M/model-Q4_K_M-00002-of-00002.gguf";
const MMPROJ: &str = "mmproj-model-f16.gguf";

fn gguf_repo() -> FakeRepo {
    FakeRepo::new(
        'a',
        vec![
            FakeFile::generated("README.md", 300, false),
            FakeFile::generated("model-Q8_0.gguf", 50_000, true),
            FakeFile::generated(PART_1, 600_000, true),
            FakeFile::generated(PART_2, 400_000, true),
            FakeFile::generated(MMPROJ, 100_000, true),
        ],
    )
}

fn mlx_repo() -> FakeRepo {
    FakeRepo::new(
        'b',
        vec![
            FakeFile::generated("config.json", 500, false),
            FakeFile::generated("model.safetensors", 300_000, true),
            FakeFile::generated("tokenizer.json", 2_000, false),
        ],
    )
}

/// A fake hub, a temporary folder with the data and the cache, and `corral serve` over them.
struct Setup {
    hub: FakeHub,
    dir: tempfile::TempDir,
    /// `None` between a crash and the restart.
    serve: Option<Corral>,
}

impl Setup {
    async fn start(repos: Vec<(&str, FakeRepo)>) -> Setup {
        let hub = FakeHub::start(repos).await;
        let dir = tempfile::tempdir().unwrap();
        let corral = serve(dir.path(), &hub).await;
        Setup {
            hub,
            dir,
            serve: Some(corral),
        }
    }

    fn corral(&self) -> &Corral {
        self.serve.as_ref().expect("corral runs")
    }

    /// Kills `corral serve` at once, as a crash would: nothing of it runs its shutdown.
    async fn crash(&mut self) {
        self.serve.take().expect("corral runs").sigkill().await;
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("hub")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache()
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    fn snapshot(&self, repo: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("snapshots")
            .join(&self.hub.repo(repo).commit)
    }

    /// SIGTERM: the engine must exit cleanly, its downloads stopped, within 30 s.
    async fn terminate(&mut self) {
        self.serve.take().expect("corral runs").terminate().await;
    }

    /// `corral serve` again over the same folders (after a crash or a stop).
    async fn restart(&mut self) {
        self.serve = Some(serve(self.dir.path(), &self.hub).await);
    }

    async fn download(&self, body: Value) -> (u16, Value) {
        self.corral()
            .json(Method::POST, "/api/v1/models/download", Some(body))
            .await
    }

    /// Starts a download and answers its job id.
    async fn start_job(&self, repo: &str) -> String {
        let (status, body) = self.download(json!({ "repo": repo })).await;
        assert_eq!(status, 202, "{body}");
        body["job_id"].as_str().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        let (status, job) = self
            .corral()
            .json(Method::GET, &format!("/api/v1/models/jobs/{id}"), None)
            .await;
        assert_eq!(status, 200, "{job}");
        job
    }

    /// Polls the job until `done` holds; panics after a minute with its last state.
    async fn wait_job(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job never {what}: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ended(&self, id: &str) -> Value {
        self.wait_job(id, "ended", |job| {
            !matches!(job["state"].as_str(), Some("queued" | "running"))
        })
        .await
    }

    async fn delete_model(&self, query: &str) -> (u16, Value) {
        self.corral()
            .json(Method::DELETE, &format!("/api/v1/models?{query}"), None)
            .await
    }

    fn stored(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path().join("data/downloads.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

async fn serve(dir: &Path, hub: &FakeHub) -> Corral {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cache = dir.join("hub");
    let endpoint = hub.endpoint();
    Corral::start(
        &data,
        "instances:\n  port_range: [11700, 11719]\n",
        &[
            ("CORRAL_MANAGEMENT_KEYS", MANAGEMENT_KEY),
            ("HF_ENDPOINT", &endpoint),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_TOKEN", "hf_test_token"),
        ],
        MANAGEMENT_KEY,
    )
    .await
}

/// Every regular file and link below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_below(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Asserts the snapshot entry `name` is a relative link to the blob holding `file`'s bytes.
fn assert_linked(setup: &Setup, repo: &str, name: &str) {
    let file = setup.hub.repo(repo).file(name);
    let entry = setup.snapshot(repo).join(name);
    let target = std::fs::read_link(&entry).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(target.is_relative(), "{target:?}");
    assert!(
        target.ends_with(format!("blobs/{}", file.blob_name())),
        "{target:?}"
    );
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        file.bytes.as_ref(),
        "{name}"
    );
}

#[tokio::test]
async fn a_tagged_gguf_download_takes_the_split_parts_and_mmproj_with_progress_events() {
    let setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    // About a second of transfer: several progress events.
    setup.hub.knobs.set_throttle(1_000_000);
    let response = setup
        .corral()
        .http
        .get(setup.corral().url("/api/v1/events"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(response);
    assert_eq!(events.next().await.event, "snapshot");

    let started = Instant::now();
    let (status, accepted) = setup
        .download(json!({ "repo": format!("{GGUF}:q4_k_m") }))
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["repo"], GGUF);
    assert_eq!(accepted["tag"], "q4_k_m");
    let id = accepted["job_id"].as_str().unwrap().to_owned();

    let mut seen = Vec::new();
    loop {
        let event = events.until("download", |e| e.event == "download").await;
        let job = event.json();
        assert_eq!(job["id"], id.as_str());
        let state = job["state"].as_str().unwrap().to_owned();
        seen.push(job);
        if state != "queued" && state != "running" {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "completed", "{last}");
    let total = 600_000 + 400_000 + 100_000;
    assert_eq!(last["bytes_total"], total);
    assert_eq!(last["bytes_done"], total);
    assert_eq!(
        (last["files_total"].as_u64(), last["files_done"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        last["path"].as_str().map(PathBuf::from),
        Some(setup.snapshot(GGUF).join(PART_1))
    );
    // Progress while the bytes flowed, never going back, and rate-limited: not one per chunk.
    let partial: Vec<&Value> = seen
        .iter()
        .filter(|job| {
            job["state"] == "running"
                && job["bytes_done"]
                    .as_u64()
                    .is_some_and(|done| done > 0 && done < total)
        })
        .collect();
    assert!(partial.len() >= 2, "progress events: {seen:?}");
    assert!(partial
        .iter()
        .any(|job| job["speed_bytes_per_s"].as_u64() > Some(0)));
    let done: Vec<u64> = seen
        .iter()
        .map(|job| job["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    let bound = (elapsed * 4.0).ceil() as usize + 12;
    assert!(
        seen.len() <= bound,
        "{} events in {elapsed:.2} s",
        seen.len()
    );

    // The hub's layout: relative links into blobs, refs/main, nothing the tag did not pick.
    for name in [PART_1, PART_2, MMPROJ] {
        assert_linked(&setup, GGUF, name);
    }
    let commit = &setup.hub.repo(GGUF).commit;
    assert_eq!(
        std::fs::read_to_string(setup.repo_dir(GGUF).join("refs/main")).unwrap(),
        *commit
    );
    let mut entries = files_below(&setup.snapshot(GGUF));
    entries.sort();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(files_below(&setup.repo_dir(GGUF).join("blobs")).len(), 3);

    // Recorded as Corral's, owner-only.
    let stored = setup.stored();
    assert_eq!(stored["models"][0]["repo"], GGUF);
    assert_eq!(stored["models"][0]["format"], "gguf");
    assert_eq!(stored["models"][0]["files"].as_array().unwrap().len(), 3);
    assert_eq!(stored["pending"], json!([]));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(setup.dir.path().join("data/downloads.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The model library lists it as Corral's (so the UI offers to delete it): one model of two
    // parts, its projector paired.
    let (status, library) = setup
        .corral()
        .json(Method::GET, "/api/v1/models", None)
        .await;
    assert_eq!(status, 200, "{library}");
    let listed = library
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == last["path"])
        .unwrap_or_else(|| panic!("{} not in {library}", last["path"]));
    assert_eq!(listed["downloaded"], true, "{listed}");
    assert_eq!(listed["repo"], GGUF, "{listed}");
    assert_eq!(listed["files"].as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed["mmproj"].as_str().unwrap().ends_with(MMPROJ),
        "{listed}"
    );

    // Deleting it by its tag (any case, as the tag matched) takes the whole repository folder:
    // nothing else was there.
    let (status, body) = setup.delete_model(&format!("repo={GGUF}&tag=Q4_K_M")).await;
    assert_eq!(status, 204, "{body}");
    assert!(!setup.repo_dir(GGUF).exists());
    assert_eq!(setup.stored()["models"], json!([]));
}

#[tokio::test]
async fn an_interrupted_transfer_resumes_with_a_range_request_and_the_file_is_right() {
    let setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    *setup.hub.knobs.cut_once.lock().unwrap() = Some((PART_1.to_owned(), 250_000));
    let id = setup.start_job(&format!("{GGUF}:Q4_K_M")).await;
    let job = setup.wait_ended(&id).await;
    assert_eq!(job["state"], "completed", "{job}");
    let ranges = setup.hub.knobs.ranges_of(PART_1);
    assert!(
        !ranges.is_empty() && ranges.iter().all(|start| *start <= 250_000),
        "ranges asked: {ranges:?}"
    );
    assert_linked(&setup, GGUF, PART_1);
    assert!(files_below(&setup.repo_dir(GGUF).join("blobs"))
        .iter()
        .all(|blob| blob.extension().is_none_or(|ext| ext != "incomplete")));
}

#[tokio::test]
async fn a_corrupt_file_fails_the_job_and_leaves_nothing_broken_in_the_snapshot() {
    let setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    setup
        .hub
        .knobs
        .corrupt
        .lock()
        .unwrap()
        .push(MMPROJ.to_owned());
    let id = setup.start_job(&format!("{GGUF}:Q4_K_M")).await;
    let job = setup.wait_ended(&id).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("corrupt") && error.contains(MMPROJ),
        "{error}"
    );
    assert!(!setup.snapshot(GGUF).join(MMPROJ).exists());
    // Every entry left is a whole file that hashes to its blob's name; no partial mmproj.
    let mmproj_blob = setup.hub.repo(GGUF).file(MMPROJ).blob_name();
    for blob in files_below(&setup.repo_dir(GGUF).join("blobs")) {
        let name = blob.file_name().unwrap().to_str().unwrap();
        assert!(!name.starts_with(&mmproj_blob), "{name} was kept");
    }
    for entry in files_below(&setup.snapshot(GGUF)) {
        let bytes = std::fs::read(&entry).unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let target = std::fs::read_link(&entry).unwrap();
        assert_eq!(target.file_name().unwrap().to_str().unwrap(), sha);
    }
    assert_eq!(setup.stored()["models"], json!([]));

    // Served right, the same model downloads.
    setup.hub.knobs.corrupt.lock().unwrap().clear();
    let id = setup.start_job(&format!("{GGUF}:Q4_K_M")).await;
    assert_eq!(setup.wait_ended(&id).await["state"], "completed");
    assert_linked(&setup, GGUF, MMPROJ);
}

#[tokio::test]
async fn a_cancelled_download_continues_from_its_partial_file_when_asked_again() {
    let setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    setup.hub.knobs.set_throttle(200_000);
    let reference = format!("{GGUF}:Q4_K_M");
    let id = setup.start_job(&reference).await;
    setup
        .wait_job(&id, "half-way", |job| {
            job["bytes_done"].as_u64() >= Some(100_000)
        })
        .await;
    let (status, job) = setup
        .corral()
        .json(Method::DELETE, &format!("/api/v1/models/jobs/{id}"), None)
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "cancelled");
    let kept = job["bytes_done"].as_u64().unwrap();
    assert!(kept > 0 && kept < 1_100_000, "{job}");
    assert_eq!(setup.job(&id).await["state"], "cancelled");
    let partial: Vec<PathBuf> = files_below(&setup.repo_dir(GGUF).join("blobs"))
        .into_iter()
        .filter(|blob| blob.extension().is_some_and(|ext| ext == "incomplete"))
        .collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let (status, body) = setup
        .corral()
        .json(Method::DELETE, &format!("/api/v1/models/jobs/{id}"), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("job_ended")),
        "{body}"
    );

    setup.hub.knobs.set_throttle(0);
    let again = setup.start_job(&reference).await;
    assert_ne!(again, id);
    assert_eq!(setup.wait_ended(&again).await["state"], "completed");
    let ranges = setup.hub.knobs.ranges_of(PART_1);
    assert!(
        ranges.iter().any(|start| *start > 0),
        "no resume: {ranges:?}"
    );
    assert_linked(&setup, GGUF, PART_1);
}

/// How the engine goes away mid-download.
#[derive(Clone, Copy, Debug)]
enum Exit {
    /// SIGKILL: nothing of it runs its shutdown.
    Crash,
    /// SIGTERM: it stops its downloads and exits cleanly.
    Stop,
}

async fn continues_after(exit: Exit) {
    let mut setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    setup.hub.knobs.set_throttle(200_000);
    let id = setup.start_job(&format!("{GGUF}:Q4_K_M")).await;
    setup
        .wait_job(&id, "half-way", |job| {
            job["bytes_done"].as_u64() >= Some(100_000)
        })
        .await;
    match exit {
        Exit::Crash => setup.crash().await,
        Exit::Stop => setup.terminate().await,
    }
    setup.hub.knobs.set_throttle(0);
    setup.restart().await;

    let (status, jobs) = setup
        .corral()
        .json(Method::GET, "/api/v1/models/jobs", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|job| job["id"] == id.as_str()),
        "{exit:?}: {jobs}"
    );
    let job = setup.wait_ended(&id).await;
    assert_eq!(job["state"], "completed", "{exit:?}: {job}");
    let ranges = setup.hub.knobs.ranges_of(PART_1);
    assert!(
        ranges.iter().any(|start| *start > 0),
        "{exit:?}: no resume: {ranges:?}"
    );
    for name in [PART_1, PART_2, MMPROJ] {
        assert_linked(&setup, GGUF, name);
    }
    assert_eq!(setup.stored()["pending"], json!([]));
}

#[tokio::test]
async fn an_engine_restarted_after_a_crash_continues_an_unfinished_download() {
    continues_after(Exit::Crash).await;
}

#[tokio::test]
async fn an_engine_stopped_and_started_again_continues_an_unfinished_download() {
    continues_after(Exit::Stop).await;
}

/// A hub may announce any size: one larger than the disk has free fails the job before a byte
/// is fetched, so a download cannot fill the disk.
#[tokio::test]
async fn a_download_larger_than_the_free_disk_fails_before_any_byte_is_fetched() {
    let setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    setup
        .hub
        .knobs
        .announced_size
        .lock()
        .unwrap()
        .push((PART_2.to_owned(), 1 << 60));
    let id = setup.start_job(&format!("{GGUF}:Q4_K_M")).await;
    let job = setup.wait_ended(&id).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("not enough disk space"), "{job}");
    assert!(
        setup.hub.knobs.gets.lock().unwrap().is_empty(),
        "no bytes fetched"
    );
    assert!(!setup.repo_dir(GGUF).join("blobs").exists());
}

#[tokio::test]
async fn file_names_from_a_hostile_hub_are_refused_and_nothing_is_written_outside() {
    let hostile = [
        "../../../escape.gguf",
        "/tmp/corral-abs.gguf",
        "..\\..\\bs.gguf",
        "a/../../up.gguf",
    ];
    let repos: Vec<(String, FakeRepo)> = hostile
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut repo = FakeRepo::new(
                'c',
                vec![FakeFile::generated("model-Q4_K_M.gguf", 1_000, true)],
            );
            repo.extra_names.push((*name).to_owned());
            (format!("evil/m{i}"), repo)
        })
        .collect();
    let setup = Setup::start(
        repos
            .iter()
            .map(|(id, repo)| (id.as_str(), repo.clone()))
            .collect(),
    )
    .await;
    for (id, _) in &repos {
        let job = setup.start_job(id).await;
        let job = setup.wait_ended(&job).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .contains("not a safe relative path"),
            "{job}"
        );
        assert!(!setup.repo_dir(id).join("snapshots").exists());
    }
    // Nothing at all was written: not the good file, not the hostile one, anywhere.
    let everything = files_below(setup.dir.path());
    assert!(
        everything
            .iter()
            .all(|path| path.starts_with(setup.dir.path().join("data"))),
        "{everything:?}"
    );
    assert!(!Path::new("/tmp/corral-abs.gguf").exists());
}

#[tokio::test]
async fn bad_requests_are_refused_with_400_and_change_nothing() {
    let setup = Setup::start(vec![(GGUF, gguf_repo())]).await;
    for body in [
        json!({"repo": "../../etc"}),
        json!({"repo": "/etc/passwd"}),
        json!({"repo": "org/na%2fme"}),
        json!({"repo": "org/.."}),
        json!({"repo": "org/name/extra"}),
        json!({"repo": format!("{GGUF}:../../x")}),
        json!({"repo": GGUF, "format": "exe"}),
        json!({"repo": format!("{GGUF}:Q4_K_M"), "format": "safetensors"}),
        json!({"repo": GGUF, "path": "/tmp"}),
        json!({"repo": 5}),
        json!({}),
    ] {
        let (status, error) = setup.download(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {error}");
        assert!(
            error["error"].is_string() && error["details"].is_string(),
            "{error}"
        );
    }
    for query in [
        "repo=../../x",
        "repo=org/name&tag=../x",
        "repo=org/name&confirm=yes",
        "",
    ] {
        let (status, error) = setup.delete_model(query).await;
        assert_eq!(status, 400, "{query} -> {error}");
    }
    let (status, jobs) = setup
        .corral()
        .json(Method::GET, "/api/v1/models/jobs", None)
        .await;
    assert_eq!((status, jobs), (200, json!([])));
    assert!(!setup.cache().exists());
    assert!(setup.hub.knobs.gets.lock().unwrap().is_empty());

    let (status, _) = setup
        .corral()
        .json(Method::GET, "/api/v1/models/jobs/nope", None)
        .await;
    assert_eq!(status, 404);
    let unkeyed = reqwest::Client::new()
        .post(setup.corral().url("/api/v1/models/download"))
        .json(&json!({"repo": GGUF}))
        .send()
        .await
        .unwrap();
    assert_eq!(unkeyed.status(), 401);
}

#[tokio::test]
async fn a_safetensors_repo_comes_whole_and_deletion_refuses_models_corral_did_not_download() {
    let setup = Setup::start(vec![("mlx/m", mlx_repo())]).await;
    let id = setup.start_job("mlx/m").await;
    let job = setup.wait_ended(&id).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["format"], "safetensors");
    assert_eq!(job["files_total"], 3);
    assert_eq!(
        job["path"].as_str().map(PathBuf::from),
        Some(setup.snapshot("mlx/m"))
    );
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_linked(&setup, "mlx/m", name);
    }

    // A model some other tool put in the cache.
    let foreign = setup.cache().join("models--other--m");
    std::fs::create_dir_all(foreign.join("blobs")).unwrap();
    std::fs::create_dir_all(foreign.join("snapshots/c1")).unwrap();
    std::fs::write(foreign.join("blobs/abc"), "weights").unwrap();
    std::os::unix::fs::symlink("../../blobs/abc", foreign.join("snapshots/c1/model.gguf")).unwrap();
    let (status, error) = setup.delete_model("repo=other/m").await;
    assert_eq!(
        (status, error["error"].as_str()),
        (409, Some("not_downloaded_by_corral")),
        "{error}"
    );
    assert!(foreign.join("blobs/abc").exists());
    let (status, _) = setup.delete_model("repo=other/m&confirm=true").await;
    assert_eq!(status, 204);
    assert!(!foreign.exists());

    let (status, body) = setup.delete_model("repo=mlx/m").await;
    assert_eq!(status, 204, "{body}");
    assert!(!setup.repo_dir("mlx/m").exists());
    let (status, error) = setup.delete_model("repo=mlx/m").await;
    assert_eq!(
        (status, error["error"].as_str()),
        (404, Some("model_not_found")),
        "{error}"
    );
}
