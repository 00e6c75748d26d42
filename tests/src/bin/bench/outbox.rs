//! Outbox delivery: deliveries per second while one, then two, gateways drain replies
//! queued beforehand (timed from the first POST to the last at the receiver), and the
//! latency from the enqueueing transaction to the receiver at a steady inbound rate.
//! Every run checks that each reply arrived exactly once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aihummer_tests::{Gateway, TestDb};
use anyhow::Context;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cost::TICKS_PER_SECOND;
use crate::inbound::{WORKSPACE, app_role_gateway};
use crate::load;
use crate::receiver::Receiver;
use crate::report::{Report, percentile, rate, thousands};

/// How long the receiver takes to answer in the drain where the window is the limit.
const ANSWER: Duration = Duration::from_millis(20);

/// Runs the scenario with the gateway at `bin`.
pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Outbox",
        "one gateway draining the same queue, for two gateways",
    );
    let replies = if quick { 10_000 } else { 20_000 };
    // On two busy cores one drain's rate moves by a fifth from run to run, more than a
    // second gateway changes it: alternate the two and compare the medians.
    let pairs = if quick { 2 } else { 3 };
    let mut one = Vec::with_capacity(pairs);
    let mut two = Vec::with_capacity(pairs);
    for pair in 1..=pairs {
        let run = format!(", run {pair} of {pairs}");
        one.push(drain(bin, 1, replies, None, &run, &mut report).await?);
        two.push(drain(bin, 2, replies, None, &run, &mut report).await?);
    }
    let (one_median, two_median) = (median(&one, |d| d.rate), median(&two, |d| d.rate));
    let rates = |drains: &[Drained]| {
        drains
            .iter()
            .map(|d| thousands(d.rate))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let draining = thousands(replies as f64);
    report
        .figure(
            format!("deliveries/s, 1 gateway draining {draining}, median of {pairs} runs"),
            format!("{} ({})", thousands(one_median), rates(&one)),
        )
        .target("≥ 5,000", one_median >= 5000.0);
    report
        .figure(
            format!("deliveries/s, 2 gateways draining {draining}, median of {pairs} runs"),
            format!("{} ({})", thousands(two_median), rates(&two)),
        )
        .baseline(thousands(one_median))
        .target("more than 1 gateway", two_median > one_median);
    let cpu = |drains: &[Drained]| format!("{:.0} µs", median(drains, |d| d.cpu_micros));
    report.figure(
        "busy CPU of the whole machine per delivery, gateway start to last POST, 1 / 2 gateways (medians)",
        format!("{} / {}", cpu(&one), cpu(&two)),
    );
    // Why a second gateway adds little here: what one gateway leaves of the CPUs is all a
    // second can use, and its own cost per delivery comes out of that.
    let busy = |drains: &[Drained]| format!("{:.0}%", 100.0 * median(drains, |d| d.busy_share));
    report.figure(
        "share of the machine's CPU time busy, gateway start to last POST, 1 / 2 gateways (medians)",
        format!("{} / {}", busy(&one), busy(&two)),
    );
    if !quick {
        // A receiver that takes a while to answer: the window, not the CPU, is the limit.
        let answer = Some(ANSWER);
        let replies = 5_000;
        let one = drain(bin, 1, replies, answer, "", &mut report).await?;
        let two = drain(bin, 2, replies, answer, "", &mut report).await?;
        let name = |n: &str| {
            format!(
                "deliveries/s, {n} draining {}, receiver answering in {} ms",
                thousands(replies as f64),
                ANSWER.as_millis()
            )
        };
        report.figure(name("1 gateway"), thousands(one.rate));
        report
            .figure(name("2 gateways"), thousands(two.rate))
            .baseline(thousands(one.rate))
            .target("more than 1 gateway", two.rate > one.rate);
    }
    let seconds = if quick { 5 } else { 20 };
    steady(bin, 1000, seconds, &mut report).await?;
    Ok(report)
}

/// What one drain measured.
struct Drained {
    /// Deliveries per second, first POST to last.
    rate: f64,
    /// Busy CPU time of the whole machine per delivery, in microseconds.
    cpu_micros: f64,
    /// The share of the machine's CPU time that was busy, gateway start to last POST.
    busy_share: f64,
}

/// The median of `value` over `drains` (the upper one of an even count).
fn median(drains: &[Drained], value: fn(&Drained) -> f64) -> f64 {
    let mut values: Vec<f64> = drains.iter().map(value).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The machine's busy CPU time so far, in clock ticks, from `/proc/stat`.
fn busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat's cpu line")?;
    // user nice system idle iowait irq softirq ...: all but idle and iowait.
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Ok(at(0) + at(1) + at(2) + at(5) + at(6))
}

/// Checks every `expected` key arrived exactly once: a figure for `what`, and a failure of
/// the run for each duplicate or loss.
pub fn exactly_once(
    report: &mut Report,
    what: &str,
    arrivals: &[(String, SystemTime)],
    expected: &HashSet<String>,
) {
    let mut seen = HashSet::with_capacity(arrivals.len());
    let duplicates = arrivals.iter().filter(|(k, _)| !seen.insert(k)).count();
    let lost = expected.iter().filter(|k| !seen.contains(k)).count();
    report
        .figure(
            format!("{what}: duplicates / lost"),
            format!("{duplicates} / {lost}"),
        )
        .target("0 / 0", duplicates == 0 && lost == 0);
    if duplicates > 0 {
        report.fail(format!(
            "{what}: {duplicates} replies delivered more than once"
        ));
    }
    if lost > 0 {
        report.fail(format!("{what}: {lost} replies never delivered"));
    }
}

/// When each reply was enqueued (`created_at`, its transaction's start), in seconds since
/// the Unix epoch, by idempotency key.
pub async fn enqueued_at(pool: &sqlx::PgPool) -> anyhow::Result<HashMap<String, f64>> {
    let queued: Vec<(String, f64)> = sqlx::query_as(
        "SELECT idempotency_key, extract(epoch FROM created_at)::float8 FROM outbox",
    )
    .fetch_all(pool)
    .await?;
    Ok(queued.into_iter().collect())
}

/// Waits until `n` POSTs have arrived at `receiver`, or `deadline` has passed.
pub async fn wait_for_arrivals(receiver: &Receiver, n: usize, deadline: Duration) {
    let until = Instant::now() + deadline;
    while receiver.count() < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Queues `replies` replies, then times `gateways` gateways delivering them to a receiver
/// answering each after `answer` (or at once); `run` tells the drain apart in the report.
async fn drain(
    bin: &Path,
    gateways: usize,
    replies: i64,
    answer: Option<Duration>,
    run: &str,
    report: &mut Report,
) -> anyhow::Result<Drained> {
    let db = TestDb::create().await;
    let url = db.url();
    let setup = Gateway::start_with(
        bin,
        &[
            ("AIHUMMER_DATABASE_URL", &url),
            ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
        ],
        |_| {},
    );
    setup.wait_ready(Duration::from_secs(60)).await;
    drop(setup);
    let pool = db.pool().await;
    // Time-ordered ids, as the gateway gives the replies it queues.
    let ids: Vec<Uuid> = (0..replies).map(|_| Uuid::now_v7()).collect();
    let keys: Vec<String> = sqlx::query_scalar(
        // One after another, 100 µs apart, as inbound traffic queues them while the
        // receiver is away: the queue's order is then the order the rows lie in.
        "INSERT INTO outbox (id, workspace_id, idempotency_key, payload, created_at, next_attempt_at)
         SELECT id, $1::uuid, 'bench-' || n,
                jsonb_build_object('text', 'reply ' || n, 'channel', 'bench', 'n', n),
                queued, queued
         FROM unnest($2::uuid[]) WITH ORDINALITY AS r(id, n),
              LATERAL (SELECT now() - ($3 - n) * interval '100 microseconds' AS queued) AS q
         RETURNING idempotency_key",
    )
    .bind(WORKSPACE)
    .bind(&ids)
    .bind(replies)
    .fetch_all(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(&pool).await?;
    let receiver = match answer {
        Some(delay) => Receiver::start_slow("bench", delay).await?,
        None => Receiver::start().await?,
    };
    let hook = receiver.url();
    let env = [
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str()),
        ("AIHUMMER_LOG", "warn"),
    ];
    let busy_before = busy_ticks()?;
    let started = Instant::now();
    let running: Vec<Gateway> = (0..gateways)
        .map(|_| Gateway::start_with(bin, &env, |_| {}))
        .collect();
    wait_for_arrivals(&receiver, keys.len(), Duration::from_secs(120)).await;
    let busy_after = busy_ticks()?;
    let elapsed = started.elapsed();
    // Let a late duplicate show itself, and every outcome be recorded.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status <> 'delivered'")
                .fetch_one(&pool)
                .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(running);
    let arrivals = receiver.arrivals();
    let answered = match answer {
        Some(delay) => format!(", answered in {} ms", delay.as_millis()),
        None => String::new(),
    };
    let what = format!(
        "{gateways} gateway(s) draining {}{answered}{run}",
        thousands(replies as f64)
    );
    let rate = match (arrivals.first(), arrivals.last()) {
        (Some((_, first)), Some((_, last))) => rate(
            arrivals.len(),
            last.duration_since(*first).unwrap_or_default(),
        ),
        _ => 0.0,
    };
    let busy_seconds = (busy_after - busy_before) as f64 / TICKS_PER_SECOND;
    let cpu_micros = busy_seconds * 1e6 / arrivals.len().max(1) as f64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_share = busy_seconds / (elapsed.as_secs_f64() * cpus).max(f64::EPSILON);
    exactly_once(report, &what, &arrivals, &keys.into_iter().collect());
    pool.close().await;
    Ok(Drained {
        rate,
        cpu_micros,
        busy_share,
    })
}

/// Sends inbound messages at `per_second` for `seconds` to a gateway that also delivers,
/// and measures from each reply's enqueueing transaction to its arrival.
async fn steady(
    bin: &Path,
    per_second: u32,
    seconds: u32,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut db = TestDb::create().await;
    let receiver = Receiver::start().await?;
    let hook = receiver.url();
    let gateway = app_role_gateway(
        bin,
        &mut db,
        &[("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str())],
    )
    .await;
    let messages = (per_second * seconds) as usize;
    let sent = load::open_loop(
        &gateway.url(""),
        load::prepare("steady", messages),
        per_second,
        Duration::from_secs(u64::from(seconds) * 2),
    )
    .await?;
    wait_for_arrivals(&receiver, sent.ok, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool = db.pool().await;
    let created = enqueued_at(&pool).await?;
    let arrivals = receiver.arrivals();
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(key, at)| {
            let at = at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
            Some(Duration::from_secs_f64((at - created.get(key)?).max(0.0)))
        })
        .collect();
    latencies.sort();
    let what = format!("steady {per_second}/s for {seconds}s");
    report
        .figure(
            format!("{what}: inbound sent ok / failed"),
            format!("{} / {}", sent.ok, sent.failed),
        )
        .target("0 failed", sent.failed == 0);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    report
        .figure(
            format!("{what}: enqueue → receiver p50 / p99 / max"),
            format!(
                "{p50:.1} / {p99:.1} / {:.1} ms",
                percentile(&latencies, 100.0)
            ),
        )
        .target("p50 < 10 ms, p99 < 100 ms", p50 < 10.0 && p99 < 100.0);
    if let Some(error) = &sent.first_error {
        report.note(format!(
            "{what}: the first failed inbound request: {error}."
        ));
    }
    exactly_once(report, &what, &arrivals, &created.into_keys().collect());
    pool.close().await;
    drop(gateway);
    Ok(())
}
