//! The instance log: markers, interleaved output, tails, huge lines and rotation.

use super::*;

#[tokio::test]
async fn logs_have_markers_interleaved_output_and_a_tail() {
    let fx = Fixture::new("chatty");
    fx.supervisor
        .start(shell("echo one; echo two >&2; echo three"), no_restart())
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| state.status() == Status::Stopped).await;

    let all = fx.supervisor.logs(None).unwrap();
    let lines: Vec<&str> = all.split('\n').collect();
    let start = lines
        .iter()
        .position(|line| line.starts_with("=== Instance chatty started at "))
        .unwrap();
    let stop = lines
        .iter()
        .position(|line| line.starts_with("=== Instance chatty stopped at "))
        .unwrap();
    let output: Vec<&str> = lines[start + 1..stop].to_vec();
    for word in ["one", "two", "three"] {
        assert!(output.contains(&word), "{word} missing from {output:?}");
    }
    assert!(lines[start].ends_with(" ==="));
    // `=== Instance chatty started at 2026-11-24 19:40:06 ===`: a local date and time.
    let stamp = lines[start]
        .trim_start_matches("=== Instance chatty started at ")
        .trim_end_matches(" ===");
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{stamp}"
    );

    for wanted in [1, 3, 4] {
        let tail = fx.supervisor.logs(Some(wanted)).unwrap();
        assert_eq!(
            tail,
            lines[lines.len() - wanted..].join("\n"),
            "tail of {wanted}"
        );
    }
    assert_eq!(fx.supervisor.logs(Some(10_000)).unwrap(), all);
    assert_eq!(fx.supervisor.logs(Some(0)).unwrap(), "");
}

#[tokio::test]
async fn logs_of_an_instance_never_started_in_this_run_come_from_its_file() {
    let fx = Fixture::new("old");
    assert_eq!(fx.supervisor.logs(Some(5)).unwrap(), "", "no file yet");
    std::fs::create_dir_all(&fx.settings.logs_dir).unwrap();
    std::fs::write(
        fx.settings.logs_dir.join("old.log"),
        "first\nsecond\nthird\n",
    )
    .unwrap();
    let fresh = Supervisor::new("old", fx.settings.clone());
    assert_eq!(fresh.logs(Some(2)).unwrap(), "second\nthird");
    assert_eq!(fresh.logs(None).unwrap(), "first\nsecond\nthird");
}

#[tokio::test]
async fn a_three_megabyte_line_without_newline_is_logged_and_breaks_nothing() {
    let fx = Fixture::new("long");
    let spec = LaunchSpec {
        program: "python3".to_string(),
        args: vec![
            "-c".to_string(),
            "import sys; sys.stdout.write('x' * 3_000_000); sys.stdout.flush(); print(); print('after the long line')"
                .to_string(),
        ],
        env: Vec::new(),
        health_url: format!("http://127.0.0.1:{}/health", free_port()),
        secret: Default::default(),
        ready_request: None,
        stop_signal: StopSignal::Interrupt,
    };
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    let seen = states_until(&fx.supervisor, |state| state.status() != Status::Running).await;
    assert_eq!(
        seen.last().unwrap().status(),
        Status::Stopped,
        "the backend exited cleanly"
    );

    let tail = fx.supervisor.logs(Some(3)).unwrap();
    assert!(
        tail.starts_with("after the long line\n=== Instance long stopped at "),
        "{}",
        &tail[..tail.len().min(200)]
    );
    let all = fx.supervisor.logs(None).unwrap();
    assert_eq!(
        count(&all, "x"),
        3_000_000,
        "every byte of the long line is in the log"
    );
}

#[tokio::test]
async fn log_file_is_rotated_past_its_size_and_old_files_are_dropped() {
    let fx = Fixture::with("big", |settings| {
        settings.log_max_bytes = 20_000;
        settings.log_keep_files = 2;
    });
    let script = "i=0; while [ $i -lt 1500 ]; do echo \"line $i of a backend that talks a lot, padded to be long enough\"; i=$((i+1)); done";
    fx.supervisor
        .start(shell(script), no_restart())
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| state.status() == Status::Stopped).await;

    let logs = &fx.settings.logs_dir;
    for file in ["big.log", "big.log.1", "big.log.2"] {
        let size = std::fs::metadata(logs.join(file))
            .map(|meta| meta.len())
            .unwrap_or(0);
        assert!(size > 0 && size <= 20_000 + 200, "{file}: {size} bytes");
    }
    assert!(
        !logs.join("big.log.3").exists(),
        "only log_keep_files rotated files are kept"
    );
    let newest = fx.supervisor.logs(Some(2)).unwrap();
    assert!(
        newest.starts_with("=== Instance big stopped at "),
        "{newest}"
    );
}
