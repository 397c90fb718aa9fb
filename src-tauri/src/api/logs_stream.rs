//! `/api/v1/instances/{name}/logs/stream`: an instance's log as server-sent events, the last
//! lines first, then every new line as the backend writes it.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{stream, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, ErrorBody};
use super::events::KEEP_ALIVE;
use super::Api;

/// Lines of history sent when `lines` is not given.
const DEFAULT_LINES: usize = 1000;
/// At most this many lines of history, however many are asked for.
const MAX_LINES: usize = 100_000;

/// Follow the instance's log: the last `lines` lines (default 1000, at most 100000; 0 = none) as
/// `line` events, then each new line as it is written, across restarts of the instance, until it
/// is deleted. A client too slow to keep up gets a `marker` event saying how many lines it missed
/// (the log file has them).
#[utoipa::path(get, path = "/api/v1/instances/{name}/logs/stream", tag = "instances",
    params(
        ("name" = String, Path, description = "Instance name"),
        ("lines" = Option<i64>, Query, description = "Lines of history first (default 1000, max 100000; <= 0 = none)")),
    responses(
        (status = 200, description = "Server-sent events: `line` (data = the line), `marker`; a `keep-alive` comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid name or lines", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn logs_stream(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let lines = match query.get("lines").map(|lines| lines.trim()) {
        None | Some("") => DEFAULT_LINES,
        Some(lines) => {
            let lines: i64 = lines.parse().map_err(|_| {
                ApiError::bad_request(
                    "invalid_lines",
                    format!("lines must be an integer, got '{lines}'"),
                )
            })?;
            usize::try_from(lines).unwrap_or(0).min(MAX_LINES)
        }
    };
    let follower = api.registry.follow_logs(&name, lines).await?;
    let history = stream::iter(follower.tail).map(|line| Ok(line_event(&line)));
    let live = stream::unfold(follower.live, |mut live| async move {
        let event = match live.recv().await {
            Ok(line) => line_event(&line),
            Err(RecvError::Lagged(missed)) => Event::default().event("marker").data(format!(
                "… {missed} lines skipped: this view fell behind; the log file has them all"
            )),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), live))
    });
    let stream = history.chain(live).take_until(api.registry.streams_ended());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

/// One log line as an event. A carriage return (a progress bar redrawing itself) keeps what a
/// terminal would show: the text after the last one.
fn line_event(line: &str) -> Event {
    let shown = line
        .trim_end_matches('\r')
        .rsplit('\r')
        .next()
        .unwrap_or_default();
    Event::default().event("line").data(shown)
}
