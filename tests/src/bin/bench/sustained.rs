//! Sustained load: inbound at a steady 2,000 messages/s for 10 minutes (`--quick`: 30 s)
//! to one gateway that delivers every reply to the bench's receiver, with a retention
//! short enough that housekeeping purges delivered replies and answered messages during
//! the run. Shows whether delivery keeps up to the end (deliveries per tenth of the run,
//! latency in the first and last window) and what the two tables cost on disk and in
//! vacuum work as rows churn through them. Every reply must arrive exactly once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aihummer_tests::TestDb;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::feed;
use crate::inbound::app_role_gateway;
use crate::outbox::{exactly_once, wait_for_arrivals};
use crate::receiver::Receiver;
use crate::report::{Report, percentile, thousands};
use crate::tables::{self, Reading};

/// Inbound messages per second.
const RATE: u32 = 2_000;
/// The share of the rate each tenth must deliver.
const KEEP_UP: f64 = 0.95;

/// How long the run is and how its housekeeping is set.
struct Plan {
    duration: Duration,
    /// `AIHUMMER_RETENTION`: short, so rows are purged while the run goes on.
    retention: Duration,
    /// `AIHUMMER_HOUSEKEEPING_INTERVAL`.
    interval: Duration,
    /// The first and last window whose latency is compared; no longer than the
    /// retention, so the first window's rows are still there when it is read.
    window: Duration,
    /// How often the bench vacuums the tables itself when the server's autovacuum is off.
    vacuum: Duration,
}

/// Runs the scenario with the gateway at `bin`.
pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let plan = if quick {
        Plan {
            duration: Duration::from_secs(30),
            retention: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            window: Duration::from_secs(6),
            vacuum: Duration::from_secs(10),
        }
    } else {
        Plan {
            duration: Duration::from_secs(600),
            retention: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            window: Duration::from_secs(60),
            vacuum: Duration::from_secs(60),
        }
    };
    let mut report = Report::new(
        "Sustained",
        "the first tenth (deliveries) or first window (latency) of the same run",
    );
    let mut db = TestDb::create().await;
    let receiver = Receiver::start().await?;
    let hook = receiver.url();
    let retention = format!("{}s", plan.retention.as_secs());
    let interval = format!("{}s", plan.interval.as_secs());
    let gateway = app_role_gateway(
        bin,
        &mut db,
        &[
            ("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str()),
            ("AIHUMMER_RETENTION", retention.as_str()),
            ("AIHUMMER_HOUSEKEEPING_INTERVAL", interval.as_str()),
        ],
    )
    .await;
    let pool = db.pool().await;
    let before = readings(&pool).await?;
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&pool)
        .await?;
    let load_before = load_average();

    let (t0, started) = (SystemTime::now(), Instant::now());
    let url = gateway.url("");
    let duration = plan.duration;
    let vacuuming = (autovacuum == "off").then(|| {
        tokio::spawn(stand_in_vacuum(
            pool.clone(),
            plan.vacuum,
            started + duration,
        ))
    });
    let sampling = tokio::spawn(sizes_each_tenth(pool.clone(), started, duration / 10));
    let feeding =
        tokio::spawn(async move { feed::run(&url, "sustained", RATE, duration, |_| false).await });
    let (w, d) = (plan.window, plan.duration);
    let (mut first, mut last) = (HashMap::new(), HashMap::new());
    // Each window is looked up in two halves, each before retention can have purged it.
    tokio::time::sleep_until(started + w / 2).await;
    enqueued(&pool, &receiver, &mut first, t0, t0 + w / 2).await?;
    tokio::time::sleep_until(started + w + Duration::from_millis(500)).await;
    enqueued(&pool, &receiver, &mut first, t0 + w / 2, t0 + w).await?;
    let settled = readings(&pool).await?;
    tokio::time::sleep_until(started + d - w / 2 + Duration::from_millis(500)).await;
    enqueued(&pool, &receiver, &mut last, t0 + d - w, t0 + d - w / 2).await?;
    let fed = feeding.await??;
    let load_after = load_average();
    wait_for_arrivals(&receiver, fed.accepted.len(), Duration::from_secs(60)).await;
    let drained = started.elapsed().saturating_sub(d);
    let end = SystemTime::now();
    enqueued(&pool, &receiver, &mut last, t0 + d - w / 2, end).await?;
    // Let a late duplicate show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = readings(&pool).await?;
    let arrivals = receiver.arrivals();

    let what = format!(
        "{}/s for {} s",
        thousands(f64::from(RATE)),
        plan.duration.as_secs()
    );
    report
        .figure(
            format!("{what}: inbound accepted / failed"),
            format!(
                "{} / {}",
                thousands(fed.accepted.len() as f64),
                thousands(fed.failed as f64)
            ),
        )
        .target("0 failed", fed.failed == 0);
    if let Some(error) = &fed.first_error {
        report.note(format!("The first failed inbound request: {error}."));
        // The answer says only that the message was not stored; the gateway's log says why.
        let logs = gateway.logs();
        let warnings: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("WARN"))
            .take(3)
            .collect();
        report.note(format!(
            "The gateway's first warnings: {}",
            warnings.join(" | ")
        ));
    }
    let tenth = plan.duration / 10;
    let accepted = per_tenth(fed.accepted.iter().map(|s| s.at), epoch(t0), tenth);
    let delivered = per_tenth(arrivals.iter().map(|(_, at)| *at), epoch(t0), tenth);
    report.figure(
        "inbound accepted/s in each tenth of the run",
        joined(&accepted),
    );
    let slowest = delivered.iter().copied().fold(f64::MAX, f64::min);
    report
        .figure("deliveries/s in each tenth of the run", joined(&delivered))
        .target(
            format!("each ≥ {}", thousands(KEEP_UP * f64::from(RATE))),
            slowest >= KEEP_UP * f64::from(RATE),
        );
    let (head, tail) = (delivered[0], delivered[9]);
    report
        .figure("deliveries/s in the last tenth", thousands(tail))
        .baseline(thousands(head))
        .target("≥ 95% of the first tenth", tail >= KEEP_UP * head);
    let late = arrivals.iter().filter(|(_, at)| *at >= t0 + d).count();
    report.figure(
        "replies still to deliver when the inbound stopped, delivered in",
        format!(
            "{} in {:.0} ms",
            thousands(late as f64),
            drained.as_secs_f64() * 1000.0
        ),
    );
    let (first_p50, first_p99) = latency(&arrivals, &first);
    let (last_p50, last_p99) = latency(&arrivals, &last);
    let window = plan.window.as_secs();
    let target = "p50 < 10 ms, p99 < 100 ms";
    report
        .figure(
            format!("enqueue → receiver p50 / p99, replies arriving in the first {window} s"),
            format!(
                "{first_p50:.1} / {first_p99:.1} ms (1 in {SAMPLE}: {})",
                first.len()
            ),
        )
        .target(target, first_p50 < 10.0 && first_p99 < 100.0);
    report
        .figure(
            format!("enqueue → receiver p50 / p99, replies arriving in the last {window} s"),
            format!(
                "{last_p50:.1} / {last_p99:.1} ms (1 in {SAMPLE}: {})",
                last.len()
            ),
        )
        .baseline(format!("{first_p50:.1} / {first_p99:.1} ms"))
        .target(target, last_p50 < 10.0 && last_p99 < 100.0);
    let sampled = sampling.await??;
    for (n, table) in TABLES.iter().enumerate() {
        let totals: Vec<String> = sampled.iter().map(|tenth| tables::size(tenth[n])).collect();
        report.figure(
            format!("{table} total size at the end of each tenth of the run"),
            totals.join(" · "),
        );
        report.figure(
            format!("{table} heap / indexes / total: start → {window} s → end"),
            format!(
                "{} → {} → {}",
                before[n].sizes(),
                settled[n].sizes(),
                after[n].sizes()
            ),
        );
        report.figure(
            format!("{table} rows and vacuum: start → end"),
            format!("{} → {}", before[n].vacuum(), after[n].vacuum()),
        );
    }
    match vacuuming {
        Some(vacuuming) => {
            let took = vacuuming.await??;
            let longest = took.iter().max().copied().unwrap_or_default();
            report.figure(
                format!(
                    "VACUUM run by the bench every {} s (the server's autovacuum is off)",
                    plan.vacuum.as_secs()
                ),
                format!(
                    "{} runs, the longest {:.0} ms",
                    took.len(),
                    longest.as_secs_f64() * 1000.0
                ),
            );
            report.note(format!(
                "The test server runs with `autovacuum = off` (a setting of the shared \
                 server, not the product's), so the bench stands in for it: a plain \
                 `VACUUM` of both tables every {} s (the full run's 60 s is autovacuum's \
                 default `autovacuum_naptime`; this churn would trigger it every round).",
                plan.vacuum.as_secs()
            ));
        }
        None => report.note(format!("The server's autovacuum is {autovacuum}.")),
    }
    report.note(format!(
        "Load average (1 min) on the machine at the start / end of the inbound: {load_before} \
         / {load_after} on {} cores (other builds share them).",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let (passes, replies, messages, largest) = purges(&pool).await?;
    report.figure(
        format!(
            "purged by housekeeping (retention {} s, every {} s): replies / messages",
            plan.retention.as_secs(),
            plan.interval.as_secs()
        ),
        format!(
            "{} / {} in {passes} passes (the largest {} replies)",
            thousands(replies as f64),
            thousands(messages as f64),
            thousands(largest as f64)
        ),
    );
    let expected: HashSet<String> = fed.accepted.into_iter().map(|s| s.reply).collect();
    exactly_once(&mut report, "sustained", &arrivals, &expected);
    pool.close().await;
    drop(gateway);
    Ok(report)
}

/// The tables read before, during and after.
const TABLES: [&str; 2] = ["outbox", "inbound_messages"];

async fn readings(pool: &PgPool) -> anyhow::Result<Vec<Reading>> {
    let mut all = Vec::new();
    for table in TABLES {
        all.push(tables::read(pool, table).await?);
    }
    Ok(all)
}

fn epoch(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The 1-minute load average, as `/proc/loadavg` reads.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

/// Every table's total size (heap, indexes, TOAST) at the end of each of the ten `tenth`s
/// after `started`, so the report shows whether the tables level off.
async fn sizes_each_tenth(
    pool: PgPool,
    started: Instant,
    tenth: Duration,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let mut tenths = Vec::with_capacity(10);
    for n in 1..=10 {
        tokio::time::sleep_until(started + tenth * n).await;
        tenths.push(readings(&pool).await?.iter().map(|r| r.total).collect());
    }
    Ok(tenths)
}

/// Vacuums both tables every `every` until `until`, as autovacuum would; returns how long
/// each round took.
async fn stand_in_vacuum(
    pool: PgPool,
    every: Duration,
    until: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::new();
    let mut next = Instant::now() + every;
    while next < until {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        sqlx::query("VACUUM outbox, inbound_messages")
            .execute(&pool)
            .await?;
        took.push(started.elapsed());
        next += every;
    }
    Ok(took)
}

/// One in how many replies' enqueue time is looked up: enough for a p99, few enough that
/// the lookups do not load the database the run is measuring.
const SAMPLE: usize = 10;

/// Adds to `into` when each of a sample of the replies that arrived between `from` and
/// `to` was enqueued (Unix seconds), looked up by primary key (a reply's id is its key).
async fn enqueued(
    pool: &PgPool,
    receiver: &Receiver,
    into: &mut HashMap<String, f64>,
    from: SystemTime,
    to: SystemTime,
) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = receiver
        .sample(from, to, SAMPLE)
        .iter()
        .filter_map(|key| Uuid::parse_str(key).ok())
        .collect();
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT idempotency_key, extract(epoch FROM created_at)::float8 FROM outbox
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    into.extend(rows);
    Ok(())
}

/// Events per second in each tenth (`tenth` long) of a run that started at `t0`.
fn per_tenth(events: impl Iterator<Item = SystemTime>, t0: f64, tenth: Duration) -> Vec<f64> {
    let mut counts = [0usize; 10];
    for at in events {
        let offset = (epoch(at) - t0) / tenth.as_secs_f64();
        if (0.0..10.0).contains(&offset) {
            counts[offset as usize] += 1;
        }
    }
    counts
        .iter()
        .map(|&n| n as f64 / tenth.as_secs_f64())
        .collect()
}

fn joined(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| thousands(*r))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// p50 and p99 in milliseconds from each reply in `created` being enqueued to arriving.
fn latency(arrivals: &[(String, SystemTime)], created: &HashMap<String, f64>) -> (f64, f64) {
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(key, at)| {
            let took = epoch(*at) - created.get(key)?;
            Some(Duration::from_secs_f64(took.max(0.0)))
        })
        .collect();
    latencies.sort();
    (percentile(&latencies, 50.0), percentile(&latencies, 99.0))
}

/// Housekeeping passes that finished, replies and messages they purged, and the most
/// replies one pass purged, from the outcomes the scheduler records in `job_runs`.
async fn purges(pool: &PgPool) -> anyhow::Result<(i64, i64, i64, i64)> {
    Ok(sqlx::query_as(
        "WITH runs AS (
             SELECT regexp_match(outcome, 'purged (\\d+) replies and (\\d+) messages') AS m
             FROM job_runs WHERE job = 'outbox_housekeeping' AND finished_at IS NOT NULL
         )
         SELECT count(*), coalesce(sum(m[1]::bigint), 0)::bigint,
                coalesce(sum(m[2]::bigint), 0)::bigint, coalesce(max(m[1]::bigint), 0)::bigint
         FROM runs",
    )
    .fetch_one(pool)
    .await?)
}
