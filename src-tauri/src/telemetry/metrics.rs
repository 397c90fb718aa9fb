//! The Prometheus exposition: families the requests and the scheduler update as they happen,
//! and gauges read from the instances and devices at each scrape.
//!
//! Series are labelled `model` with the instance's name (the `model` a `/v1` request names, an
//! alias resolved), not `instance`: Prometheus gives every target an `instance` label of its own
//! and would rename ours to `exported_instance`.
//!
//! Label values are bounded: instances are the user's own definitions (a request for an unknown
//! model never reaches an instance), routes are a fixed list (anything else is `other`), status
//! is its class. A client cannot mint new series by sending odd paths or model names.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::Finished;

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `/v1` routes that get their own series; the rest are `other`.
const ROUTES: &[&str] = &[
    "chat/completions",
    "completions",
    "embeddings",
    "messages",
    "messages/count_tokens",
    "responses",
    "rerank",
    "reranking",
    "tokenize",
    "detokenize",
    "audio/transcriptions",
    "audio/speech",
    "images/generations",
];

/// The route label of a request path: `/v1/chat/completions?x` is `chat/completions`.
pub fn route_label(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or_default();
    let route = path
        .trim_start_matches('/')
        .strip_prefix("v1/")
        .unwrap_or(path.trim_start_matches('/'))
        .trim_end_matches('/');
    ROUTES
        .iter()
        .find(|known| **known == route)
        .copied()
        .unwrap_or("other")
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    model: String,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    model: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from a fast local answer to a long generation.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

/// Seconds to the first token: model loads (an on-demand start) included.
fn first_token_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Seconds waited for one of the instance's slots.
fn queue_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Generated tokens per second of one answer.
fn speed_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    ])
}

/// The series of one instance that its requests and the scheduler update, in a registry of its
/// own: a scrape encodes again only the instances that changed since the one before, and copies
/// the text of the others (a render of 200 instances is ~20,000 lines, ~2 ms to encode whole).
struct InstanceSeries {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms<RouteLabels>,
    first_token: Histograms<RouteLabels>,
    queue_wait: Histograms<InstanceLabels>,
    tokens: Family<TokenLabels, Counter>,
    speed: Histograms<InstanceLabels>,
    evictions: Family<EvictionLabels, Counter>,
    /// Something changed since `text` was encoded. Set after the change, cleared before the
    /// encoding: a change in between is encoded now and again next time, never lost.
    changed: AtomicBool,
    /// Each family with series, in registration order, as last encoded.
    text: Mutex<Vec<EncodedFamily>>,
}

impl InstanceSeries {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("corral");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Inference requests answered, by instance, route and status class (499: the client left first)",
            requests.clone(),
        );
        let duration: Histograms<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to the end of its answer",
            Unit::Seconds,
            duration.clone(),
        );
        let first_token: Histograms<RouteLabels> =
            Family::new_with_constructor(first_token_histogram);
        registry.register_with_unit(
            "time_to_first_token",
            "Time from a request's arrival to the first byte of its answer's body (the first token of a stream), a start on demand included",
            Unit::Seconds,
            first_token.clone(),
        );
        let queue_wait: Histograms<InstanceLabels> = Family::new_with_constructor(queue_histogram);
        registry.register_with_unit(
            "queue_wait",
            "Time a request waited for one of its instance's slots (max_concurrent)",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens the answers reported, by kind (prompt or completion)",
            tokens.clone(),
        );
        let speed: Histograms<InstanceLabels> = Family::new_with_constructor(speed_histogram);
        registry.register(
            "tokens_per_second",
            "Generation speed of each answer that reported it",
            speed.clone(),
        );
        let evictions = Family::<EvictionLabels, Counter>::default();
        registry.register(
            "evictions",
            "Instances stopped without their owner asking: make_room (for another start), idle (idle_timeout), unload (a client unloaded the model)",
            evictions.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            first_token,
            queue_wait,
            tokens,
            speed,
            evictions,
            changed: AtomicBool::new(true),
            text: Mutex::new(Vec::new()),
        }
    }

    fn changed(&self) {
        self.changed.store(true, Ordering::Release);
    }

    /// Its families, encoded again if something changed.
    fn families(&self) -> std::sync::MutexGuard<'_, Vec<EncodedFamily>> {
        let mut text = lock(&self.text);
        if self.changed.swap(false, Ordering::AcqRel) {
            *text = split_families(&encode(&self.registry));
        }
        text
    }
}

/// One family of an encoded registry.
struct EncodedFamily {
    name: String,
    /// Its `# HELP`, `# TYPE` and `# UNIT` lines.
    header: String,
    samples: String,
}

fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// `text` (an exposition) cut into its families, in order; an `# EOF` line is left out. A
/// family is its `#` lines (help, type, unit), then its samples up to the next `# HELP`.
fn split_families(text: &str) -> Vec<EncodedFamily> {
    let text = text.strip_suffix("# EOF\n").unwrap_or(text);
    let mut families = Vec::new();
    let mut rest = text;
    while let Some(block) = rest.strip_prefix("# HELP ") {
        let end = block.find("\n# HELP ").map_or(block.len(), |at| at + 1);
        let (this, next) = block.split_at(end);
        rest = next;
        // The header is the lines that start with `#`; the first sample ends it.
        let mut header_end = 0;
        for line in this.split_inclusive('\n') {
            if header_end > 0 && !line.starts_with('#') {
                break;
            }
            header_end += line.len();
        }
        let (header, samples) = this.split_at(header_end);
        families.push(EncodedFamily {
            name: header.split(' ').next().unwrap_or_default().to_owned(),
            header: format!("# HELP {header}"),
            samples: samples.to_owned(),
        });
    }
    families
}

/// The engine's metric families.
pub struct Metrics {
    /// The request families, per instance, by name.
    series: RwLock<BTreeMap<String, Arc<InstanceSeries>>>,
    /// The engine's own families: its build, and what a scrape reads at that moment.
    registry: Registry,
    /// What the scrape reads from the instances and devices; set for the length of one render.
    scrape: Arc<ScrapeCollector>,
    /// Held for one render: the collector's samples belong to it.
    rendering: Mutex<()>,
}

/// Why an instance was stopped without its owner asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Stopped to make room for another start.
    MakeRoom,
    /// Idle past its `idle_timeout`.
    Idle,
    /// A client unloaded its model (Ollama's `keep_alive: 0`).
    Unload,
}

impl Eviction {
    fn label(self) -> &'static str {
        match self {
            Eviction::MakeRoom => "make_room",
            Eviction::Idle => "idle",
            Eviction::Unload => "unload",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("corral");
        registry.register(
            "build",
            "The engine's build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let scrape = Arc::new(ScrapeCollector::default());
        registry.register_collector(Box::new(Arc::clone(&scrape)));
        Self {
            series: RwLock::new(BTreeMap::new()),
            registry,
            scrape,
            rendering: Mutex::new(()),
        }
    }

    /// The series of `instance`, made on its first request.
    fn series(&self, instance: &str) -> Arc<InstanceSeries> {
        let known = self
            .series
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(instance)
            .cloned();
        known.unwrap_or_else(|| {
            let mut series = self
                .series
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(
                series
                    .entry(instance.to_owned())
                    .or_insert_with(|| Arc::new(InstanceSeries::new())),
            )
        })
    }

    pub fn request(&self, request: &Finished) {
        let route = route_label(&request.path);
        let instance = &request.instance;
        let series = self.series(instance);
        series
            .requests
            .get_or_create(&RequestLabels {
                model: instance.clone(),
                route,
                status: status_class(request.status),
            })
            .inc();
        let by_route = RouteLabels {
            model: instance.clone(),
            route,
        };
        series
            .duration
            .get_or_create(&by_route)
            .observe(request.duration.as_secs_f64());
        if let Some(first) = request.first_byte {
            series
                .first_token
                .get_or_create(&by_route)
                .observe(first.as_secs_f64());
        }
        let by_instance = InstanceLabels {
            model: instance.clone(),
        };
        series
            .queue_wait
            .get_or_create(&by_instance)
            .observe(request.queued.as_secs_f64());
        for (kind, count) in [
            ("prompt", request.prompt_tokens),
            ("completion", request.completion_tokens),
        ] {
            if let Some(count) = count {
                series
                    .tokens
                    .get_or_create(&TokenLabels {
                        model: instance.clone(),
                        kind,
                    })
                    .inc_by(count);
            }
        }
        if let Some(speed) = request.tokens_per_second.filter(|s| s.is_finite()) {
            series.speed.get_or_create(&by_instance).observe(speed);
        }
        series.changed();
    }

    /// Counts an instance stopped without its owner asking.
    pub fn evicted(&self, instance: &str, why: Eviction) {
        let series = self.series(instance);
        series
            .evictions
            .get_or_create(&EvictionLabels {
                model: instance.to_owned(),
                reason: why.label(),
            })
            .inc();
        series.changed();
    }

    /// Forgets the series of a deleted instance, so a scrape does not list it forever.
    pub fn forget(&self, instance: &str) {
        self.series
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance);
    }

    /// The exposition, with the instances' and devices' gauges from `scrape`.
    pub fn render(&self, scrape: Scrape) -> String {
        // One render at a time: the collector reads this render's samples.
        let _rendering = lock(&self.rendering);
        let series: Vec<Arc<InstanceSeries>> = self
            .series
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let texts: Vec<_> = series.iter().map(|series| series.families()).collect();
        // A family appears once some instance has a series of it (as a shared registry
        // writes them); every instance registers them in the same order.
        let mut names: Vec<(&str, &str)> = Vec::new();
        let mut size = 0;
        for family in texts.iter().flat_map(|text| text.iter()) {
            size += family.samples.len();
            if !names.iter().any(|(name, _)| *name == family.name) {
                names.push((&family.name, &family.header));
            }
        }
        let mut out = String::with_capacity(size + 64 * 1024);
        // Each family whole, its instances in name order, as the text format wants.
        for (name, header) in &names {
            out.push_str(header);
            for text in &texts {
                if let Some(family) = text.iter().find(|family| family.name == *name) {
                    out.push_str(&family.samples);
                }
            }
        }
        drop(names);
        drop(texts);
        *lock(&self.scrape.current) = scrape;
        out.push_str(&encode(&self.registry));
        *lock(&self.scrape.current) = Scrape::default();
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One instance as a scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct InstanceSample {
    pub name: String,
    /// `stopped`, `starting`, `ready`, `unhealthy`, `restarting`, `stopping` or `failed`.
    pub state: &'static str,
    pub in_flight: u64,
    pub queued: u64,
    pub starts: u64,
    pub crashes: u64,
    pub restarts: u64,
    /// 100 = one core busy.
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub vram_bytes: Option<u64>,
}

/// One device (the system's RAM, or an accelerator) as a scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct DeviceSample {
    /// `system` for RAM, else the accelerator's id.
    pub device: String,
    pub name: String,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// 0..1.
    pub utilization: Option<f64>,
}

/// What a scrape reads from the engine at that moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub instances: Vec<InstanceSample>,
    pub devices: Vec<DeviceSample>,
}

/// The states every instance count is given for, so a state with no instance reads 0.
const STATES: [&str; 7] = [
    "stopped",
    "starting",
    "ready",
    "unhealthy",
    "restarting",
    "stopping",
    "failed",
];

#[derive(Debug, Default)]
struct ScrapeCollector {
    current: Mutex<Scrape>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

impl Collector for ScrapeCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_scrape(&lock(&self.current), encoder)
    }
}

fn instance_label(sample: &InstanceSample) -> [(&'static str, &str); 1] {
    [("model", sample.name.as_str())]
}

fn device_labels(sample: &DeviceSample) -> [(&'static str, &str); 2] {
    [
        ("device", sample.device.as_str()),
        ("name", sample.name.as_str()),
    ]
}

/// A family of values computed at the scrape, one per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes what `scrape` read of the instances and devices.
fn encode_scrape(scrape: &Scrape, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let e = &mut encoder;
    family(
        e,
        "instances",
        "Instances by state",
        None,
        MetricType::Gauge,
        STATES.iter().map(|state| {
            let count = scrape
                .instances
                .iter()
                .filter(|sample| sample.state == *state)
                .count();
            (StateLabels { state }, ConstGauge::new(count as u64))
        }),
    )?;
    let per_instance = |value: fn(&InstanceSample) -> Option<u64>| {
        scrape.instances.iter().filter_map(move |sample| {
            value(sample).map(|v| (instance_label(sample), ConstGauge::new(v)))
        })
    };
    family(
        e,
        "instance_in_flight",
        "Requests an instance is answering now",
        None,
        MetricType::Gauge,
        per_instance(|s| Some(s.in_flight)),
    )?;
    family(
        e,
        "instance_queued",
        "Requests waiting for one of an instance's slots",
        None,
        MetricType::Gauge,
        per_instance(|s| Some(s.queued)),
    )?;
    let counters = |value: fn(&InstanceSample) -> u64| {
        scrape
            .instances
            .iter()
            .map(move |sample| (instance_label(sample), ConstCounter::new(value(sample))))
    };
    family(
        e,
        "instance_starts",
        "Backend processes started (automatic restarts included)",
        None,
        MetricType::Counter,
        counters(|s| s.starts),
    )?;
    family(
        e,
        "instance_crashes",
        "Backend processes that exited or failed without being asked to stop",
        None,
        MetricType::Counter,
        counters(|s| s.crashes),
    )?;
    family(
        e,
        "instance_restarts",
        "Automatic restarts after a crash",
        None,
        MetricType::Counter,
        counters(|s| s.restarts),
    )?;
    family(
        e,
        "instance_cpu_percent",
        "CPU use of a running backend's process tree (100 = one core)",
        None,
        MetricType::Gauge,
        scrape.instances.iter().filter_map(|sample| {
            sample
                .cpu_percent
                .map(|v| (instance_label(sample), ConstGauge::new(v)))
        }),
    )?;
    family(
        e,
        "instance_resident_memory",
        "Resident memory of a running backend's process tree",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        per_instance(|s| s.rss_bytes),
    )?;
    family(
        e,
        "instance_gpu_memory",
        "GPU memory of a running backend's processes (NVIDIA, through NVML)",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        per_instance(|s| s.vram_bytes),
    )?;
    let per_device = |value: fn(&DeviceSample) -> Option<u64>| {
        scrape.devices.iter().filter_map(move |sample| {
            value(sample).map(|v| (device_labels(sample), ConstGauge::new(v)))
        })
    };
    family(
        e,
        "device_memory_total",
        "Memory of a device: `system` is the RAM, the others the accelerators",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        per_device(|s| s.memory_total_bytes),
    )?;
    family(
        e,
        "device_memory_used",
        "Memory in use on a device, by every program",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        per_device(|s| s.memory_used_bytes),
    )?;
    family(
        e,
        "device_utilization_ratio",
        "How busy an accelerator is (0..1), where its probe reports it",
        None,
        MetricType::Gauge,
        scrape.devices.iter().filter_map(|sample| {
            sample
                .utilization
                .map(|v| (device_labels(sample), ConstGauge::new(v)))
        }),
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::time::Duration;

    use super::*;

    fn finished(instance: &str, path: &str, status: u16) -> Finished {
        Finished {
            instance: instance.to_owned(),
            path: path.to_owned(),
            client: None,
            key: None,
            status,
            queued: Duration::from_millis(2),
            first_byte: Some(Duration::from_millis(30)),
            duration: Duration::from_millis(80),
            prompt_tokens: Some(3),
            completion_tokens: Some(9),
            tokens_per_second: Some(f64::NAN),
            error: None,
            bodies: None,
        }
    }

    #[test]
    fn a_path_is_one_of_the_known_routes_or_other() {
        assert_eq!(route_label("/v1/chat/completions"), "chat/completions");
        assert_eq!(route_label("/v1/chat/completions/?x=1"), "chat/completions");
        assert_eq!(
            route_label("/v1/messages/count_tokens"),
            "messages/count_tokens"
        );
        for odd in [
            "/v1/../../etc",
            "/v1/chat/completions/x",
            "/v1/",
            "",
            "/v1/Chat/Completions",
        ] {
            assert_eq!(route_label(odd), "other", "{odd}");
        }
    }

    #[test]
    fn the_exposition_has_the_requests_the_samples_and_no_series_for_odd_input() {
        let metrics = Metrics::new();
        metrics.request(&finished("a", "/v1/chat/completions", 200));
        metrics.request(&finished("a", "/v1/evil\"}\nfake_metric 1", 499));
        metrics.evicted("a", Eviction::Idle);
        let text = metrics.render(Scrape {
            instances: vec![InstanceSample {
                name: "a".to_owned(),
                state: "ready",
                starts: 2,
                rss_bytes: Some(1024),
                ..Default::default()
            }],
            devices: vec![DeviceSample {
                device: "system".to_owned(),
                name: "RAM".to_owned(),
                memory_total_bytes: Some(4096),
                ..Default::default()
            }],
        });
        for line in [
            "corral_requests_total{model=\"a\",route=\"chat/completions\",status=\"2xx\"} 1",
            "corral_requests_total{model=\"a\",route=\"other\",status=\"4xx\"} 1",
            "corral_tokens_total{model=\"a\",kind=\"completion\"} 18",
            "corral_evictions_total{model=\"a\",reason=\"idle\"} 1",
            "corral_instances{state=\"ready\"} 1",
            "corral_instances{state=\"stopped\"} 0",
            "corral_instance_starts_total{model=\"a\"} 2",
            "corral_instance_resident_memory_bytes{model=\"a\"} 1024",
            "corral_device_memory_total_bytes{device=\"system\",name=\"RAM\"} 4096",
            "corral_time_to_first_token_seconds_bucket{model=\"a\",route=\"chat/completions\",le=\"0.05\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(!text.contains("fake_metric"), "{text}");
        // A speed that is not a number is not observed.
        assert!(
            text.contains("corral_tokens_per_second_count{model=\"a\"} 0")
                || !text.contains("corral_tokens_per_second_count{model=\"a\"}")
        );
        // The samples belong to that render only.
        let again = metrics.render(Scrape::default());
        assert!(
            !again.contains("corral_instance_starts_total{model=\"a\"}"),
            "{again}"
        );
        metrics.forget("a");
        let gone = metrics.render(Scrape::default());
        assert!(!gone.contains("model=\"a\""), "{gone}");
    }

    #[test]
    fn a_render_shows_what_changed_since_the_last_and_keeps_each_family_whole() {
        let metrics = Metrics::new();
        metrics.request(&finished("a", "/v1/chat/completions", 200));
        metrics.request(&finished("b", "/v1/embeddings", 200));
        let first = metrics.render(Scrape::default());
        assert!(first.contains(
            "corral_requests_total{model=\"a\",route=\"chat/completions\",status=\"2xx\"} 1"
        ));
        // Only `a` changes; `b`'s series are copied from the last render.
        metrics.request(&finished("a", "/v1/chat/completions", 200));
        metrics.evicted("b", Eviction::Idle);
        let second = metrics.render(Scrape::default());
        assert!(second.contains(
            "corral_requests_total{model=\"a\",route=\"chat/completions\",status=\"2xx\"} 2"
        ));
        assert!(second
            .contains("corral_requests_total{model=\"b\",route=\"embeddings\",status=\"2xx\"} 1"));
        assert!(second.contains("corral_evictions_total{model=\"b\",reason=\"idle\"} 1"));
        // Each family once, its series together (the text format's rule).
        for family in [
            "corral_requests_total",
            "corral_request_duration_seconds",
            "corral_evictions_total",
        ] {
            assert_eq!(
                second.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{second}"
            );
            let lines: Vec<usize> = second
                .lines()
                .enumerate()
                .filter(|(_, line)| line.starts_with(family))
                .map(|(at, _)| at)
                .collect();
            assert!(
                lines.windows(2).all(|w| w[1] == w[0] + 1),
                "{family} split: {second}"
            );
        }
        assert_eq!(metrics.render(Scrape::default()), second, "nothing changed");
        metrics.forget("a");
        assert!(!metrics.render(Scrape::default()).contains("model=\"a\""));
    }
}
