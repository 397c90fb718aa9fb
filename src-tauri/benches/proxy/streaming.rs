//! Streaming latency: time to the first SSE chunk and the gaps between chunks, as a client sees
//! them, for an upstream that writes one chunk every 10 ms.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;

pub struct StreamStats {
    /// Send to first body chunk, one per request.
    pub ttfb: Vec<Duration>,
    /// Between consecutive body chunks, all requests together.
    pub gaps: Vec<Duration>,
}

/// `runs` sequential streamed requests (after one warm-up) over one keep-alive client.
pub async fn measure(url: &str, body: &str, runs: usize) -> anyhow::Result<StreamStats> {
    let http = reqwest::Client::new();
    let mut stats = StreamStats {
        ttfb: Vec::new(),
        gaps: Vec::new(),
    };
    for run in 0..=runs {
        let started = Instant::now();
        let response = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        let mut chunks = response.bytes_stream();
        let mut arrivals = Vec::new();
        while let Some(chunk) = chunks.next().await {
            if !chunk?.is_empty() {
                arrivals.push(Instant::now());
            }
        }
        if run == 0 {
            continue;
        }
        let Some(first) = arrivals.first() else {
            bail!("{url} streamed nothing");
        };
        stats.ttfb.push(*first - started);
        stats
            .gaps
            .extend(arrivals.windows(2).map(|pair| pair[1] - pair[0]));
    }
    Ok(stats)
}
