//! One install as the UI sees it, and the moves its state may make: `running` to one of
//! `completed`, `failed` or `cancelled`, once.

use std::path::PathBuf;

use serde::Serialize;
use utoipa::ToSchema;

use crate::backends::BackendType;

/// Lines of the log a job carries; the whole log is in its `log_path`.
pub const TAIL_LINES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// One install of a backend: `POST /api/v1/backends/{backend}/install` starts it, the
/// `backend_install` event carries it at every change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstallJob {
    /// Tells this install from the backend's earlier ones.
    pub id: String,
    pub backend: BackendType,
    pub state: JobState,
    /// What it is doing, in words (`creating the virtualenv`, `building 37%`).
    pub step: String,
    /// How far the step is, 0 to 1, when its output says (the build's `[n/m]`).
    pub progress: Option<f64>,
    /// The log's last lines.
    pub log_tail: Vec<String>,
    /// The whole log of this install.
    #[schema(value_type = String)]
    pub log_path: PathBuf,
    /// Why it failed.
    pub error: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; `null` while running.
    pub finished_at: Option<String>,
    /// The installed executable, once completed.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
}

/// How an install ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(PathBuf),
    Failed(String),
    Cancelled,
}

impl InstallJob {
    pub fn new(backend: BackendType, log_path: PathBuf) -> InstallJob {
        InstallJob {
            id: hex::encode(rand::random::<[u8; 8]>()),
            backend,
            state: JobState::Running,
            step: "starting".to_owned(),
            progress: None,
            log_tail: Vec::new(),
            log_path,
            error: None,
            started_at: now(),
            finished_at: None,
            path: None,
        }
    }

    /// Moves a running job to its end; `false` (and nothing changed) when it had already ended.
    pub fn finish(&mut self, outcome: Outcome) -> bool {
        if self.state != JobState::Running {
            return false;
        }
        self.finished_at = Some(now());
        self.progress = None;
        match outcome {
            Outcome::Completed(path) => {
                self.state = JobState::Completed;
                self.step = "installed".to_owned();
                self.path = Some(path);
            }
            Outcome::Failed(error) => {
                self.state = JobState::Failed;
                self.step = "failed".to_owned();
                self.error = Some(error);
            }
            Outcome::Cancelled => {
                self.state = JobState::Cancelled;
                self.step = "cancelled".to_owned();
            }
        }
        true
    }

    /// A step began: its words, and no progress known yet.
    pub fn begin(&mut self, step: &str) {
        self.step = step.to_owned();
        self.progress = None;
    }

    /// A line of the log, kept in the tail.
    pub fn push_line(&mut self, line: &str) {
        if self.log_tail.len() == TAIL_LINES {
            self.log_tail.remove(0);
        }
        self.log_tail.push(line.to_owned());
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn job() -> InstallJob {
        InstallJob::new(BackendType::MlxLm, PathBuf::from("/data/install.log"))
    }

    #[test]
    fn a_job_ends_once_and_its_end_stays() {
        let mut job = job();
        assert_eq!(job.state, JobState::Running);
        assert!(job.finished_at.is_none());
        assert!(job.finish(Outcome::Cancelled));
        assert_eq!(job.state, JobState::Cancelled);
        assert!(job.finished_at.is_some());
        // A late success (the step that was cancelled returning) does not undo the cancel.
        assert!(!job.finish(Outcome::Completed(PathBuf::from("/x"))));
        assert_eq!(job.state, JobState::Cancelled);
        assert!(job.path.is_none());
    }

    #[test]
    fn a_failed_job_says_why_and_a_completed_one_where() {
        let mut failed = job();
        failed.finish(Outcome::Failed("no python3".to_owned()));
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.error.as_deref(), Some("no python3"));
        let mut done = job();
        done.progress = Some(0.5);
        done.finish(Outcome::Completed(PathBuf::from("/bin/x")));
        assert_eq!(done.state, JobState::Completed);
        assert_eq!(done.path, Some(PathBuf::from("/bin/x")));
        assert_eq!(done.progress, None);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut job = job();
        for n in 0..50 {
            job.push_line(&format!("line {n}"));
        }
        assert_eq!(job.log_tail.len(), TAIL_LINES);
        assert_eq!(job.log_tail.first().unwrap(), "line 30");
        assert_eq!(job.log_tail.last().unwrap(), "line 49");
    }
}
