//! The soak's load: client threads, each with its own keep-alive connection, asking for the
//! services in turn at a steady pace until told to stop, and recording every request: when,
//! in which phase, for which service, how long it took, and what came back (status, the
//! `x-consul-lookup` and `x-consul-meta-version` the upstream saw) or the connection error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A request that takes longer is a failed one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection errors kept as text per thread, for the report.
const KEPT_ERRORS: usize = 3;

/// The `x-consul-lookup` the upstream saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Stale,
    Miss,
    Error,
    Unknown,
    /// No `x-consul-lookup` header, or one the filter does not write.
    Absent,
}

impl Lookup {
    pub const ALL: [Lookup; 6] = [
        Lookup::Hit,
        Lookup::Stale,
        Lookup::Miss,
        Lookup::Error,
        Lookup::Unknown,
        Lookup::Absent,
    ];

    fn parse(value: Option<&str>) -> Lookup {
        match value {
            Some("hit") => Lookup::Hit,
            Some("stale") => Lookup::Stale,
            Some("miss") => Lookup::Miss,
            Some("error") => Lookup::Error,
            Some("unknown") => Lookup::Unknown,
            _ => Lookup::Absent,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Stale => "stale",
            Lookup::Miss => "miss",
            Lookup::Error => "error",
            Lookup::Unknown => "unknown",
            Lookup::Absent => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered {
        status: u16,
        lookup: Lookup,
        /// Index of the `x-consul-meta-version` value in the soak's list of versions.
        version: Option<u8>,
    },
    /// No answer: a connection error or the request timeout.
    Failed,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was sent, since the load began.
    pub sent: Duration,
    pub latency: Duration,
    pub phase: usize,
    pub service: usize,
    pub outcome: Outcome,
}

impl Sample {
    pub fn answered_at(&self) -> Duration {
        self.sent + self.latency
    }

    pub fn failed(&self) -> bool {
        !matches!(self.outcome, Outcome::Answered { status, .. } if (200..300).contains(&status))
    }

    pub fn lookup(&self) -> Option<Lookup> {
        match self.outcome {
            Outcome::Answered { lookup, .. } => Some(lookup),
            Outcome::Failed => None,
        }
    }
}

/// What the run tells the load as it goes.
pub struct Steering {
    /// The phase now (an index into the run's schedule).
    pub phase: AtomicUsize,
    /// The first this many services of the list are asked for.
    pub services: AtomicUsize,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Vec<Sample>, Vec<String>)>>,
}

/// Everything the load recorded.
pub struct Recorded {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

impl Load {
    /// `threads` clients sending `rate` requests per second in all to
    /// `<base>/svc/<service>/echo` from `began` on; `versions` are the
    /// `x-consul-meta-version` values told apart.
    pub fn start(
        began: Instant,
        base: &str,
        services: Arc<Vec<String>>,
        versions: Arc<Vec<String>>,
        steering: Arc<Steering>,
        threads: usize,
        rate: u32,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(threads as f64 / f64::from(rate.max(1)));
        let next = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|thread| {
                let client = Client {
                    base: base.to_string(),
                    services: Arc::clone(&services),
                    versions: Arc::clone(&versions),
                    steering: Arc::clone(&steering),
                    next: Arc::clone(&next),
                    began,
                };
                let stop = Arc::clone(&stop);
                // Threads start spread over one interval, so requests arrive evenly.
                let offset = interval.mul_f64(thread as f64 / threads as f64);
                std::thread::spawn(move || client.run(&stop, began + offset, interval))
            })
            .collect();
        Load { stop, threads }
    }

    pub fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        let mut recorded = Recorded {
            samples: Vec::new(),
            errors: Vec::new(),
        };
        for thread in self.threads {
            // A panicking load thread has printed its message; it recorded nothing.
            if let Ok((samples, errors)) = thread.join() {
                recorded.samples.extend(samples);
                recorded.errors.extend(errors);
            }
        }
        recorded.samples.sort_by_key(|sample| sample.sent);
        recorded
    }
}

struct Client {
    base: String,
    services: Arc<Vec<String>>,
    versions: Arc<Vec<String>>,
    steering: Arc<Steering>,
    next: Arc<AtomicUsize>,
    began: Instant,
}

impl Client {
    fn run(
        &self,
        stop: &AtomicBool,
        mut due: Instant,
        interval: Duration,
    ) -> (Vec<Sample>, Vec<String>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        let (mut samples, mut errors) = (Vec::new(), Vec::new());
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            // A late request does not make the next ones come in a burst.
            due = (due + interval).max(Instant::now());
            let active = self.steering.services.load(Ordering::SeqCst).max(1);
            let service = self.next.fetch_add(1, Ordering::Relaxed) % active;
            let phase = self.steering.phase.load(Ordering::SeqCst);
            let sent = Instant::now();
            let url = format!("{}/svc/{}/echo", self.base, self.services[service]);
            let outcome = match agent.get(&url).call() {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let body = response.body_mut().read_to_string().unwrap_or_default();
                    self.answered(status, &body)
                }
                Err(error) => {
                    if errors.len() < KEPT_ERRORS {
                        errors.push(format!("{url}: {error}"));
                    }
                    Outcome::Failed
                }
            };
            samples.push(Sample {
                sent: sent - self.began,
                latency: sent.elapsed(),
                phase,
                service,
                outcome,
            });
        }
        (samples, errors)
    }

    /// echo-service's answer names the enrichment headers it received.
    fn answered(&self, status: u16, body: &str) -> Outcome {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let header = |name: &str| json["headers"][name].as_str();
        let version = header("x-consul-meta-version")
            .and_then(|v| self.versions.iter().position(|known| known == v))
            .and_then(|index| u8::try_from(index).ok());
        Outcome::Answered {
            status,
            lookup: Lookup::parse(header("x-consul-lookup")),
            version,
        }
    }
}
