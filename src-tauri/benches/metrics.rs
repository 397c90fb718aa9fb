//! What one `/metrics` scrape costs to render: 200 instances, each with requests on two routes
//! (so every histogram family has 400 series), their scrape-time samples and two devices. Three
//! cases: every instance answered requests since the last scrape (the worst: all re-encoded),
//! ten of them did (a busy engine scraped every 15 s), none did.
//! `cargo bench -p corral --no-default-features --bench metrics`; prints a table.

use std::time::{Duration, Instant};

use corral::telemetry::{DeviceSample, Finished, InstanceSample, Metrics, Scrape};

const INSTANCES: usize = 200;
const RENDERS: usize = 500;

/// Three requests of instance `i`: two routes, two status classes.
fn traffic(metrics: &Metrics, i: usize) {
    for (path, status) in [
        ("/v1/chat/completions", 200),
        ("/v1/embeddings", 200),
        ("/v1/chat/completions", 503),
    ] {
        metrics.request(&Finished {
            instance: format!("model-{i}"),
            path: path.to_owned(),
            client: None,
            key: None,
            status,
            queued: Duration::from_millis(1),
            first_byte: Some(Duration::from_millis(40)),
            duration: Duration::from_millis(900),
            prompt_tokens: Some(120),
            completion_tokens: Some(64),
            tokens_per_second: Some(75.0),
            error: None,
            bodies: None,
        });
    }
}

fn main() {
    let metrics = Metrics::new();
    for i in 0..INSTANCES {
        traffic(&metrics, i);
    }
    let scrape = || Scrape {
        instances: (0..INSTANCES)
            .map(|i| InstanceSample {
                name: format!("model-{i}"),
                state: "ready",
                in_flight: 1,
                starts: 1,
                cpu_percent: Some(12.5),
                rss_bytes: Some(1 << 30),
                vram_bytes: Some(2 << 30),
                ..Default::default()
            })
            .collect(),
        devices: vec![
            DeviceSample {
                device: "system".to_owned(),
                name: "RAM".to_owned(),
                memory_total_bytes: Some(64 << 30),
                memory_used_bytes: Some(20 << 30),
                utilization: None,
            },
            DeviceSample {
                device: "GPU-0".to_owned(),
                name: "NVIDIA H200".to_owned(),
                memory_total_bytes: Some(141 << 30),
                memory_used_bytes: Some(40 << 30),
                utilization: Some(0.5),
            },
        ],
    };
    // Warm up (allocator, caches).
    let mut size = 0;
    for _ in 0..20 {
        size = metrics.render(scrape()).len();
    }
    let lines = metrics.render(scrape()).lines().count();
    println!(
        "{INSTANCES} instances: exposition {} KiB, {lines} lines",
        size / 1024
    );
    println!("| since the last scrape | renders | min | median | p99 |");
    println!("|---|---|---|---|---|");
    for (case, changed) in [
        ("every instance answered requests", INSTANCES),
        ("10 instances answered requests", 10),
        ("no request", 0),
    ] {
        let mut next = 0;
        let mut times: Vec<Duration> = (0..RENDERS)
            .map(|_| {
                // The traffic between two scrapes, untimed.
                for _ in 0..changed {
                    traffic(&metrics, next % INSTANCES);
                    next += 1;
                }
                let samples = scrape();
                let start = Instant::now();
                let text = metrics.render(samples);
                let took = start.elapsed();
                std::hint::black_box(text);
                took
            })
            .collect();
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "| {case} | {RENDERS} | {:.3} ms | {:.3} ms | {:.3} ms |",
            at(0.0).as_secs_f64() * 1e3,
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
        );
    }
}
