//! A slow route: one in ten replies goes to a channel the receiver answers only after 2 s,
//! the rest are answered at once, while inbound arrives at a steady rate. Measures the
//! other replies' deliveries per second and latency against a run of the same load with
//! no slow replies, at the default per-gateway concurrency (`AIHUMMER_OUTBOX_CONCURRENCY`,
//! the attempts one gateway keeps in flight) and, in the full run, at a larger one.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aihummer_tests::TestDb;
use tokio::time::Instant;

use crate::feed;
use crate::inbound::app_role_gateway;
use crate::outbox::{enqueued_at, exactly_once, wait_for_arrivals};
use crate::receiver::Receiver;
use crate::report::{Report, percentile, rate, thousands};

/// Inbound messages per second.
const RATE: u32 = 500;
/// How long the slow route takes to answer.
const SLOW: Duration = Duration::from_secs(2);
/// The gateway's default window of attempts in flight.
const DEFAULT_CONCURRENCY: usize = 64;

/// What the replies not sent to the slow route came to in one run.
struct Others {
    /// Their deliveries per second while the inbound ran.
    per_second: f64,
    /// Their accepted messages per second, the most they could be delivered at.
    offered: f64,
    /// Enqueue to receiver, p50 and p99, ms.
    p50: f64,
    p99: f64,
    /// From the start to the last reply of any kind arriving.
    all_delivered: Duration,
}

/// Runs the scenario with the gateway at `bin`.
pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Slow receiver",
        "the same load with no slow replies, at the default concurrency",
    );
    let seconds = if quick { 4 } else { 10 };
    let duration = Duration::from_secs(seconds);
    let baseline = once(bin, duration, DEFAULT_CONCURRENCY, false, &mut report).await?;
    let mut windows = vec![DEFAULT_CONCURRENCY];
    if !quick {
        windows.push(4 * DEFAULT_CONCURRENCY);
    }
    let what = format!("{RATE}/s for {seconds} s");
    report.figure(
        format!(
            "{what}, no slow replies, concurrency {DEFAULT_CONCURRENCY}: deliveries/s, p50 / p99"
        ),
        format!(
            "{} of {} offered, {:.1} / {:.1} ms",
            thousands(baseline.per_second),
            thousands(baseline.offered),
            baseline.p50,
            baseline.p99
        ),
    );
    for concurrency in windows {
        let slowed = once(bin, duration, concurrency, true, &mut report).await?;
        let name = format!("{what}, 10% answered in 2 s, concurrency {concurrency}");
        let share = slowed.per_second / slowed.offered.max(f64::EPSILON);
        let base_share = baseline.per_second / baseline.offered.max(f64::EPSILON);
        report
            .figure(
                format!("{name}: others' deliveries/s"),
                format!(
                    "{} of {} offered ({:.0}%)",
                    thousands(slowed.per_second),
                    thousands(slowed.offered),
                    share * 100.0
                ),
            )
            .baseline(format!("{:.0}% of offered", base_share * 100.0))
            .target("≥ 95% of offered", share >= 0.95);
        report
            .figure(
                format!("{name}: others' enqueue → receiver p50 / p99"),
                format!("{:.1} / {:.1} ms", slowed.p50, slowed.p99),
            )
            .baseline(format!("{:.1} / {:.1} ms", baseline.p50, baseline.p99))
            .target("p99 < 100 ms", slowed.p99 < 100.0);
        report.figure(
            format!("{name}: every reply delivered after"),
            format!("{:.1} s", slowed.all_delivered.as_secs_f64()),
        );
    }
    report.note(format!(
        "A slow reply holds one of the gateway's `AIHUMMER_OUTBOX_CONCURRENCY` slots only \
         until it has gone 250 ms unanswered, then steps aside into the slow lane (up to 4 × \
         the window). At {RATE}/s with 10% slow, {} slow replies are in flight on average \
         (rate × share × 2 s), within the default lane of 256, and the slots stay free for \
         the others.",
        f64::from(RATE) * 0.1 * SLOW.as_secs_f64()
    ));
    Ok(report)
}

fn tenth_is_slow(n: usize) -> bool {
    n.is_multiple_of(10)
}

fn never_slow(_: usize) -> bool {
    false
}

/// One run on a fresh database: the load for `duration` to a gateway keeping
/// `concurrency` attempts in flight, one in ten replies slow when `slow` is set.
async fn once(
    bin: &Path,
    duration: Duration,
    concurrency: usize,
    slow: bool,
    report: &mut Report,
) -> anyhow::Result<Others> {
    let mut db = TestDb::create().await;
    let receiver = if slow {
        Receiver::start_slow("slow", SLOW).await?
    } else {
        Receiver::start().await?
    };
    let hook = receiver.url();
    let window = concurrency.to_string();
    let gateway = app_role_gateway(
        bin,
        &mut db,
        &[
            ("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str()),
            ("AIHUMMER_OUTBOX_CONCURRENCY", window.as_str()),
        ],
    )
    .await;
    let (t0, started) = (SystemTime::now(), Instant::now());
    let prefix = format!("slow-{concurrency}-{slow}");
    let is_slow = if slow { tenth_is_slow } else { never_slow };
    let fed = feed::run(&gateway.url(""), &prefix, RATE, duration, is_slow).await?;
    wait_for_arrivals(&receiver, fed.accepted.len(), Duration::from_secs(60)).await;
    let all_delivered = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool = db.pool().await;
    let created = enqueued_at(&pool).await?;
    pool.close().await;
    drop(gateway);
    let others: HashSet<&str> = fed
        .accepted
        .iter()
        .filter(|s| !s.slow)
        .map(|s| s.reply.as_str())
        .collect();
    let arrivals = receiver.arrivals();
    let until = t0 + duration;
    let mut delivered = 0;
    let mut latencies = Vec::new();
    for (key, at) in arrivals.iter().filter(|(k, _)| others.contains(k.as_str())) {
        if *at < until {
            delivered += 1;
        }
        if let Some(enqueued) = created.get(key) {
            let arrived = at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            latencies.push(Duration::from_secs_f64((arrived - enqueued).max(0.0)));
        }
    }
    latencies.sort();
    let offered = fed
        .accepted
        .iter()
        .filter(|s| !s.slow && s.at < until)
        .count();
    if fed.failed > 0 {
        report.note(format!(
            "concurrency {concurrency}, slow {slow}: {} inbound requests failed; the first: {}.",
            fed.failed,
            fed.first_error.as_deref().unwrap_or("unknown")
        ));
    }
    let expected: HashSet<String> = fed.accepted.into_iter().map(|s| s.reply).collect();
    let what = format!(
        "concurrency {concurrency}{}",
        if slow { ", 10% slow" } else { "" }
    );
    exactly_once(report, &what, &arrivals, &expected);
    Ok(Others {
        per_second: rate(delivered, duration),
        offered: rate(offered, duration),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        all_delivered,
    })
}
