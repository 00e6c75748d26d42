//! The supervisor's Prometheus metrics, derived by the driver from what it already does:
//! the spawns it carries out, the children it reaps, the checks it reports, and the
//! machine's published [`Status`]. The machine itself knows nothing of them.
//!
//! A handoff's kind comes from the binary its candidate was spawned with (the installed
//! `current`: restart; a staged file: update; an installed older version: rollback); a
//! spawn with no gateway serving is a start (or a rollback, after a soak failure). A
//! handoff ends when the machine records it ([`Status::last_handoff`] changes); a start
//! ends when its gateway becomes the active one, or fails when it exits before that.
//! Every metric is described in `docs/metrics.md`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::events::{Binary, ChildId, Found, Input};
use super::status::Status;

/// Handoff and start durations, in seconds: from a fast restart to a slow migration.
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The supervisor's registry and its handles; cheap to clone (every handle is shared).
#[derive(Clone)]
pub struct Registered {
    registry: Registry,
    handoffs: IntCounterVec,
    handoff_duration: HistogramVec,
    crashes: IntCounter,
    checks: IntCounterVec,
    last_success: Gauge,
    available: IntGaugeVec,
    quarantined: IntGauge,
    active: IntGaugeVec,
    /// `aihummer_supervisor_gateway_scrape_ok`: whether the active gateway's metrics were
    /// included in the last scrape; set by the endpoint.
    pub gateway_scrape_ok: IntGauge,
}

impl Registered {
    /// A fresh registry with every metric registered and the build info set.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let name = |n: &str, help: &str| Opts::new(format!("aihummer_supervisor_{n}"), help);
        let build = IntGaugeVec::new(
            name(
                "build_info",
                "Always 1; the supervisor's version as a label.",
            ),
            &["version"],
        )?;
        build.with_label_values(&[crate::VERSION]).set(1);
        let handoffs = IntCounterVec::new(
            name(
                "handoffs_total",
                "Gateway starts and handoffs by kind (start, restart, update, rollback) and outcome (success, failure).",
            ),
            &["kind", "outcome"],
        )?;
        let handoff_duration = HistogramVec::new(
            HistogramOpts::from(name(
                "handoff_duration_seconds",
                "From a start or handoff request to its end (a handoff ends when the old gateway is gone), by kind.",
            ))
            .buckets(DURATION_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let crashes = IntCounter::with_opts(name(
            "gateway_crashes_total",
            "Restarts after the serving gateway died on its own.",
        ))?;
        let checks = IntCounterVec::new(
            name(
                "update_checks_total",
                "Update checks by outcome (up_to_date, available, refused, failed).",
            ),
            &["outcome"],
        )?;
        let last_success = Gauge::with_opts(name(
            "update_last_success_timestamp_seconds",
            "Unix time of the last update check that reached the channel (0: none yet).",
        ))?;
        let available = IntGaugeVec::new(
            name(
                "update_available_info",
                "1 with the version on offer and not installed as a label; absent when none is.",
            ),
            &["version"],
        )?;
        let quarantined = IntGauge::with_opts(name(
            "quarantined_versions",
            "Versions refused for good (quarantined) in the install dir.",
        ))?;
        let active = IntGaugeVec::new(
            name(
                "active_gateway_info",
                "1 with the serving gateway's version and pid as labels; absent while none serves.",
            ),
            &["version", "pid"],
        )?;
        let gateway_scrape_ok = IntGauge::with_opts(name(
            "gateway_scrape_ok",
            "1 when this scrape includes the serving gateway's own metrics, else 0.",
        ))?;
        for collector in [
            Box::new(build) as Box<dyn prometheus::core::Collector>,
            Box::new(handoffs.clone()),
            Box::new(handoff_duration.clone()),
            Box::new(crashes.clone()),
            Box::new(checks.clone()),
            Box::new(last_success.clone()),
            Box::new(available.clone()),
            Box::new(quarantined.clone()),
            Box::new(active.clone()),
            Box::new(gateway_scrape_ok.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            handoffs,
            handoff_duration,
            crashes,
            checks,
            last_success,
            available,
            quarantined,
            active,
            gateway_scrape_ok,
        })
    }

    /// Every metric in the Prometheus text format (no `# EOF`, so it concatenates).
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|err| prometheus::Error::Msg(err.to_string()))
    }
}

/// A start or handoff under way, as spawned.
#[derive(Debug, Clone)]
struct Pending {
    kind: &'static str,
    /// Whether a gateway served when it was spawned (a handoff), or not (a start).
    handoff: bool,
    pid: Option<u32>,
    spawned: Instant,
}

/// Turns what the driver sees into metric updates.
pub struct Observer {
    metrics: Registered,
    pending: BTreeMap<ChildId, Pending>,
    last_handoff: Option<Instant>,
    crashes: u64,
    available: Option<String>,
    active: Option<(u32, Option<String>)>,
}

impl Observer {
    /// An observer updating `metrics`.
    pub fn new(metrics: Registered) -> Self {
        Self {
            metrics,
            pending: BTreeMap::new(),
            last_handoff: None,
            crashes: 0,
            available: None,
            active: None,
        }
    }

    /// The driver spawned `child` running `binary`, with `result` ([`Input::Spawned`] or
    /// [`Input::SpawnFailed`]); `serving` is whether another gateway serves meanwhile.
    pub fn spawned(
        &mut self,
        now: Instant,
        child: ChildId,
        binary: &Binary,
        serving: bool,
        result: &Input,
    ) {
        let kind = match binary {
            Binary::Current if serving => "restart",
            Binary::Current => "start",
            Binary::Installed(_) => "rollback",
            Binary::Staged(_) => "update",
        };
        let pid = match result {
            Input::Spawned { pid, .. } => Some(*pid),
            _ => None,
        };
        self.pending.insert(
            child,
            Pending {
                kind,
                handoff: serving,
                pid,
                spawned: now,
            },
        );
        if pid.is_none() {
            self.exited(now, child);
        }
    }

    /// `child` exited: a start that never served failed. (A failed handoff is recorded by
    /// the machine, and counted from its status.)
    pub fn exited(&mut self, now: Instant, child: ChildId) {
        if let Some(pending) = self.pending.get(&child)
            && !pending.handoff
        {
            let took = now.saturating_duration_since(pending.spawned);
            self.count(pending.kind, false, took);
            self.pending.remove(&child);
        }
    }

    /// An update check ended with `found`, at wall-clock `at`.
    pub fn checked(&self, found: &Found, at: SystemTime) {
        let outcome = match found {
            Found::UpToDate(_) | Found::Ahead { .. } => "up_to_date",
            Found::Available(_) => "available",
            Found::OutsideRollout { .. } => "outside_rollout",
            Found::Refused(_) => "refused",
            Found::Failed(_) => "failed",
        };
        self.metrics.checks.with_label_values(&[outcome]).inc();
        if !matches!(found, Found::Failed(_))
            && let Ok(since_epoch) = at.duration_since(SystemTime::UNIX_EPOCH)
        {
            self.metrics.last_success.set(since_epoch.as_secs_f64());
        }
    }

    /// The machine published `status` at `now`.
    pub fn observe(&mut self, now: Instant, status: &Status) {
        if let Some(handoff) = &status.last_handoff
            && self.last_handoff != Some(handoff.at)
        {
            self.last_handoff = Some(handoff.at);
            // One handoff runs at a time: the latest candidate spawned is the one that
            // ended; older handoff entries belong to handoffs a stop cut short.
            let kind = self
                .pending
                .iter()
                .rev()
                .find(|(_, p)| p.handoff)
                .map_or("restart", |(_, p)| p.kind);
            self.pending.retain(|_, p| !p.handoff);
            self.count(kind, handoff.ok, handoff.took);
        }
        if let Some(active) = &status.active {
            let started: Vec<ChildId> = self
                .pending
                .iter()
                .filter(|(_, p)| !p.handoff && p.pid == Some(active.pid))
                .map(|(id, _)| *id)
                .collect();
            for child in started {
                if let Some(pending) = self.pending.remove(&child) {
                    let took = now.saturating_duration_since(pending.spawned);
                    self.count(pending.kind, true, took);
                }
            }
        }
        if status.crash_restarts > self.crashes {
            self.metrics
                .crashes
                .inc_by(status.crash_restarts - self.crashes);
            self.crashes = status.crash_restarts;
        }
        if self.available != status.available {
            self.metrics.available.reset();
            if let Some(version) = &status.available {
                self.metrics.available.with_label_values(&[version]).set(1);
            }
            self.available = status.available.clone();
        }
        self.metrics
            .quarantined
            .set(i64::try_from(status.quarantined.len()).unwrap_or(i64::MAX));
        let active = status.active.as_ref().map(|a| (a.pid, a.version.clone()));
        if self.active != active {
            self.metrics.active.reset();
            if let Some((pid, version)) = &active {
                let version = version.as_deref().unwrap_or("unknown");
                self.metrics
                    .active
                    .with_label_values(&[version, &pid.to_string()])
                    .set(1);
            }
            self.active = active;
        }
    }

    fn count(&self, kind: &str, ok: bool, took: Duration) {
        let outcome = if ok { "success" } else { "failure" };
        self.metrics
            .handoffs
            .with_label_values(&[kind, outcome])
            .inc();
        self.metrics
            .handoff_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::super::status::{Gateway, Handoff, Role};
    use super::*;

    fn spawned(child: u64, pid: u32) -> Input {
        Input::Spawned {
            child: ChildId(child),
            pid,
            binary: "/bin/gw".into(),
        }
    }

    #[test]
    fn a_start_that_cannot_spawn_fails_at_once() {
        let metrics = Registered::new().unwrap();
        let mut observer = Observer::new(metrics.clone());
        let failed = Input::SpawnFailed {
            child: ChildId(0),
            reason: "no such file".into(),
        };
        observer.spawned(Instant::now(), ChildId(0), &Binary::Current, false, &failed);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                "aihummer_supervisor_handoffs_total{kind=\"start\",outcome=\"failure\"} 1"
            )
        );
    }

    fn gateway(pid: u32, now: Instant) -> Gateway {
        Gateway {
            pid,
            version: Some("1.2.3".into()),
            role: Role::Ready,
            health_only: false,
            binary: "/bin/gw".into(),
            started: now,
        }
    }

    #[test]
    fn a_start_then_a_restart_are_counted_by_kind_once_each() {
        let metrics = Registered::new().unwrap();
        let mut observer = Observer::new(metrics.clone());
        let now = Instant::now();
        let mut status = Status::new(vec![]);
        observer.spawned(now, ChildId(0), &Binary::Current, false, &spawned(0, 10));
        observer.observe(now, &status);
        status.active = Some(gateway(10, now));
        observer.observe(now, &status);
        observer.observe(now, &status);
        observer.spawned(now, ChildId(1), &Binary::Current, true, &spawned(1, 11));
        status.active = Some(gateway(11, now));
        status.last_handoff = Some(Handoff {
            at: now + Duration::from_secs(1),
            ok: true,
            took: Duration::from_millis(700),
            message: "done".into(),
        });
        observer.observe(now, &status);
        observer.observe(now, &status);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                "aihummer_supervisor_handoffs_total{kind=\"start\",outcome=\"success\"} 1"
            )
        );
        assert!(text.contains(
            "aihummer_supervisor_handoffs_total{kind=\"restart\",outcome=\"success\"} 1"
        ));
        assert!(
            text.contains(
                "aihummer_supervisor_active_gateway_info{pid=\"11\",version=\"1.2.3\"} 1"
            )
        );
        assert!(
            !text.contains("pid=\"10\""),
            "the old gateway's info is gone"
        );
    }

    #[test]
    fn a_start_that_exits_before_serving_is_a_failure_and_crashes_are_counted() {
        let metrics = Registered::new().unwrap();
        let mut observer = Observer::new(metrics.clone());
        let now = Instant::now();
        let mut status = Status::new(vec!["1.3.0: crash loop".into()]);
        observer.spawned(
            now,
            ChildId(0),
            &Binary::Installed("1.1.0".parse().unwrap()),
            false,
            &spawned(0, 5),
        );
        observer.exited(now, ChildId(0));
        status.crash_restarts = 2;
        status.available = Some("1.4.0".into());
        observer.observe(now, &status);
        observer.checked(&Found::Failed("down".into()), SystemTime::UNIX_EPOCH);
        let text = metrics.encode().unwrap();
        assert!(text.contains(
            "aihummer_supervisor_handoffs_total{kind=\"rollback\",outcome=\"failure\"} 1"
        ));
        assert!(text.contains("aihummer_supervisor_gateway_crashes_total 2"));
        assert!(text.contains("aihummer_supervisor_quarantined_versions 1"));
        assert!(text.contains("aihummer_supervisor_update_available_info{version=\"1.4.0\"} 1"));
        assert!(text.contains("aihummer_supervisor_update_checks_total{outcome=\"failed\"} 1"));
        assert!(text.contains("aihummer_supervisor_update_last_success_timestamp_seconds 0"));
    }
}
