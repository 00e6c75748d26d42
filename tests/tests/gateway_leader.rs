//! Leader election across gateways, and the slot fencing of scheduled work.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use aihummer_gateway::{migrate, scheduler};
use aihummer_tests::{Gateway, TestDb, get_json, http, wait_for};
use nix::sys::signal::Signal;
use sqlx::postgres::PgConnectOptions;
use tokio::time::Instant;

/// The index of the one gateway reporting `leader: true`, once exactly one does.
async fn sole_leader(gateways: &[&Gateway], deadline: Duration) -> usize {
    let client = http();
    wait_for(deadline, "exactly one leader", || async {
        let mut leaders = Vec::new();
        for (i, gw) in gateways.iter().enumerate() {
            if let Some((200, health)) = get_json(&client, &gw.url("/healthz")).await
                && health["leader"] == true
            {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
async fn one_of_three_gateways_leads_and_another_takes_over_after_kill_9_and_after_sigterm() {
    let db = TestDb::create().await;
    let url = db.url();
    let env = [
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_HOUSEKEEPING_INTERVAL", "1s"),
    ];
    let mut gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&env)).collect();
    for gw in &gws {
        gw.wait_ready(Duration::from_secs(30)).await;
    }
    let first = sole_leader(&gws.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;

    let mut killed = gws.remove(first);
    let started = Instant::now();
    killed.child.start_kill().expect("kill -9 the leader");
    killed.wait_exit(Duration::from_secs(10)).await;
    let second = sole_leader(&gws.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let after_kill = started.elapsed();

    let mut stopped = gws.remove(second);
    let started = Instant::now();
    stopped.signal(Signal::SIGTERM);
    sole_leader(&gws.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let after_term = started.elapsed();
    assert_eq!(
        stopped.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    assert!(
        stopped.logs().contains("resigned leadership"),
        "{}",
        stopped.logs()
    );
    println!("leader failover: {after_kill:?} after kill -9, {after_term:?} after SIGTERM");
    assert!(
        after_kill < Duration::from_secs(5),
        "takeover after kill -9 took {after_kill:?}"
    );
    assert!(
        after_term < Duration::from_secs(2),
        "takeover after SIGTERM took {after_term:?}"
    );

    // The scheduler goes on under the new leaders, once per slot. (The middle leader may
    // have held office inside one slot that its predecessor had already run.)
    let pool = db.pool().await;
    wait_for(
        Duration::from_secs(10),
        "housekeeping runs under a later leader",
        || async {
            let leaders: i64 = sqlx::query_scalar("SELECT count(DISTINCT leader) FROM job_runs")
                .fetch_one(&pool)
                .await
                .ok()?;
            (leaders >= 2).then_some(())
        },
    )
    .await;
    let (runs, slots): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (job, slot)) FROM job_runs")
            .fetch_one(&pool)
            .await
            .expect("runs");
    assert_eq!(runs, slots);
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_runs WHERE outcome IS NULL AND started_at < now() - interval '5 seconds'",
    )
    .fetch_one(&pool)
    .await
    .expect("unfinished");
    assert_eq!(unfinished, 0);
}

#[tokio::test]
async fn two_leaders_racing_for_the_same_slot_run_it_exactly_once() {
    let db = TestDb::create().await;
    let options = PgConnectOptions::from_str(&db.url()).expect("url");
    migrate::apply(&options, |_| {}).await.expect("migrate");
    let pool = db.pool().await;
    let slot = scheduler::slot_of(SystemTime::now(), Duration::from_secs(60));
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let pool = pool.clone();
        racers.spawn(async move {
            scheduler::claim_slot(&pool, "race", slot, &format!("leader-{i}"))
                .await
                .expect("claim")
        });
    }
    let mut winners = 0;
    while let Some(won) = racers.join_next().await {
        winners += usize::from(won.expect("racer"));
    }
    assert_eq!(winners, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job = 'race'")
        .fetch_one(&pool)
        .await
        .expect("rows");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_leader_that_loses_its_database_connection_steps_down_and_another_takes_over() {
    let db = TestDb::create().await;
    let mut proxy = aihummer_tests::Proxy::new();
    proxy.start().await;
    let through_proxy = proxy.url(&db);
    let direct = db.url();
    let cut_off = Gateway::start(&[("AIHUMMER_DATABASE_URL", &through_proxy)]);
    cut_off.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    wait_for(
        Duration::from_secs(10),
        "the first gateway to lead",
        || async {
            let (_, health) = get_json(&client, &cut_off.url("/healthz")).await?;
            (health["leader"] == true).then_some(())
        },
    )
    .await;
    let other = Gateway::start(&[("AIHUMMER_DATABASE_URL", &direct)]);
    other.wait_ready(Duration::from_secs(30)).await;

    proxy.stop().await;
    let leads = |gw: &Gateway| {
        let (client, url) = (client.clone(), gw.url("/healthz"));
        async move {
            let (_, health) = get_json(&client, &url).await?;
            Some(health["leader"] == true)
        }
    };
    wait_for(
        Duration::from_secs(10),
        "the other gateway to lead alone",
        || async { (leads(&other).await? && !leads(&cut_off).await?).then_some(()) },
    )
    .await;
    assert!(
        cut_off.logs().contains("lost leadership"),
        "{}",
        cut_off.logs()
    );
}

#[tokio::test]
async fn a_follower_whose_connection_goes_silent_notices_and_leads_once_the_path_is_back() {
    let db = TestDb::create().await;
    let leader = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    leader.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(sole_leader(&[&leader], Duration::from_secs(10)).await, 0);
    let mut proxy = aihummer_tests::Proxy::new();
    proxy.start().await;
    let mut follower = Gateway::start(&[("AIHUMMER_DATABASE_URL", &proxy.url(&db))]);
    follower.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    let leads = |gw: &Gateway| {
        let (client, url) = (client.clone(), gw.url("/healthz"));
        async move {
            let (_, health) = get_json(&client, &url).await?;
            Some(health["leader"] == true)
        }
    };
    assert_eq!(leads(&follower).await, Some(false));
    let pool = db.pool().await;
    wait_for(
        Duration::from_secs(10),
        "the follower to wait in the leadership lock's queue",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                // pg_locks is the whole server's: other suites' gateways wait in queues too.
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                  WHERE l.locktype = 'advisory' AND NOT l.granted
                    AND d.datname = current_database()",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await;

    // The path dies without a reset: the follower's wait in the lock queue gets no answer.
    proxy.cut_silently().await;
    let cut = Instant::now();
    let noticed = "stopped answering while waiting for leadership";
    wait_for(
        Duration::from_secs(15),
        "the follower to notice its silent connection",
        || async { follower.logs().contains(noticed).then_some(()) },
    )
    .await;
    let notice_took = cut.elapsed();

    let mut leader = leader;
    leader.child.start_kill().expect("kill -9 the leader");
    leader.wait_exit(Duration::from_secs(10)).await;
    proxy.start().await;
    let restored = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "the follower to lead once the path is back",
        || async { leads(&follower).await?.then_some(()) },
    )
    .await;
    let takeover_took = restored.elapsed();
    println!(
        "silent connection noticed after {notice_took:?}; led {takeover_took:?} after restore"
    );
    assert!(
        notice_took < Duration::from_secs(8),
        "noticing took {notice_took:?}; log:\n{}",
        follower.logs()
    );
    assert!(
        takeover_took < Duration::from_secs(8),
        "taking over took {takeover_took:?}; log:\n{}",
        follower.logs()
    );
    follower.signal(Signal::SIGTERM);
    follower.wait_exit(Duration::from_secs(30)).await;
}
