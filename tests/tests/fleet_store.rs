//! The fleet's tables against a real PostgreSQL, without supervisors: many nodes racing
//! for the rollout lease get exactly one holder; a halt committed with the lease's release
//! is seen by whoever takes the lease next; a dead holder's lease can be taken once it has
//! expired; the registry marks silent nodes stale; and with the database cut, a permit
//! says "wait" within seconds instead of hanging or granting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aihummer::fleet::store::Heartbeat;
use aihummer::fleet::{Fleet, Lease, NodeId};
use aihummer::supervise::Coordination;
use aihummer::supervise::events::Permit;
use aihummer_tests::{Proxy, TestDb};
use semver::Version;

fn v(s: &str) -> Version {
    Version::parse(s).expect("version")
}

fn nodes(url: &str, n: usize) -> Vec<Arc<Fleet>> {
    (0..n)
        .map(|_| Arc::new(Fleet::new(url, NodeId::ephemeral()).expect("fleet handle")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_racing_on_a_fresh_database_get_one_lease_holder() {
    let db = TestDb::create().await;
    let fleet = nodes(&db.url(), 8);
    // All at once on a database without the schema: creating it must not race either.
    let tasks: Vec<_> = fleet
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move { node.acquire(&v("1.1.0")).await })
        })
        .collect();
    let mut granted = Vec::new();
    let mut held = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task").expect("acquire") {
            Lease::Granted => granted.push(i),
            Lease::Held { node, version } => held.push((node, version)),
            Lease::Halted { .. } => panic!("nothing is halted"),
        }
    }
    assert_eq!(granted.len(), 1, "exactly one holder: {granted:?}");
    let winner = fleet[granted[0]].node().to_string();
    assert_eq!(held.len(), 7);
    assert!(
        held.iter()
            .all(|(node, version)| *node == winner && version == "1.1.0")
    );
    // The holder asking again (a restarted supervisor) keeps it; the others still wait.
    assert_eq!(
        fleet[granted[0]].acquire(&v("1.1.0")).await.expect("again"),
        Lease::Granted
    );
    let other = (granted[0] + 1) % 8;
    assert!(matches!(
        fleet[other].acquire(&v("1.1.0")).await.expect("other"),
        Lease::Held { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_frees_the_lease_and_the_next_taker_sees_the_halt() {
    let db = TestDb::create().await;
    let fleet = nodes(&db.url(), 3);
    assert_eq!(
        fleet[0].acquire(&v("1.1.0")).await.expect("a"),
        Lease::Granted
    );
    // The others wait on the lease while the first halts the version and frees it in one
    // transaction: whichever asks next is told it is halted, never granted.
    let waiting: Vec<_> = fleet[1..]
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move {
                loop {
                    match node.acquire(&v("1.1.0")).await.expect("acquire") {
                        Lease::Held { .. } => tokio::time::sleep(Duration::from_millis(5)).await,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    fleet[0]
        .halt(&v("1.1.0"), "crash loop: died 3 times")
        .await
        .expect("halt");
    assert_eq!(fleet[0].holding(), None);
    for task in waiting {
        let Lease::Halted { node, reason } = task.await.expect("task") else {
            panic!("a halted version is never granted");
        };
        assert_eq!(node, fleet[0].node().to_string());
        assert!(reason.contains("crash loop"));
    }
    // The lease is free for another version, and the halt can be lifted.
    assert_eq!(
        fleet[1].acquire(&v("1.1.1")).await.expect("b"),
        Lease::Granted
    );
    fleet[1].release().await.expect("release");
    assert!(fleet[2].resume(&v("1.1.0")).await.expect("resume"));
    assert!(!fleet[2].resume(&v("1.1.0")).await.expect("resume again"));
    assert_eq!(
        fleet[2].acquire(&v("1.1.0")).await.expect("c"),
        Lease::Granted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_once_expired_and_the_registry_marks_it_stale() {
    let db = TestDb::create().await;
    let fleet = nodes(&db.url(), 2);
    let beat = |state: &str| Heartbeat {
        host: "host".into(),
        address: "127.0.0.1:8765".into(),
        version: Some("1.0.0".into()),
        state: state.into(),
        detail: None,
        started_at: "2026-11-30T00:00:00Z".into(),
    };
    fleet[0].heartbeat(&beat("running")).await.expect("beat a");
    fleet[1].heartbeat(&beat("running")).await.expect("beat b");
    assert_eq!(
        fleet[0].acquire(&v("1.1.0")).await.expect("a"),
        Lease::Granted
    );
    assert!(matches!(
        fleet[1].acquire(&v("1.1.0")).await.expect("b"),
        Lease::Held { .. }
    ));
    // Node a dies (kill -9 of its host): no more renewals or heartbeats. Its last ones
    // age past the lease's TTL and the stale threshold.
    let pool = db.pool().await;
    sqlx::query("UPDATE aihummer_fleet.rollout_lease SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("age the lease");
    sqlx::query(
        "UPDATE aihummer_fleet.nodes SET last_seen = now() - interval '1 minute' WHERE node_id = $1",
    )
    .bind(fleet[0].node().to_string())
    .execute(&pool)
    .await
    .expect("age the heartbeat");
    assert_eq!(
        fleet[1].acquire(&v("1.1.0")).await.expect("b"),
        Lease::Granted
    );
    // Node a comes back: its renewal finds the lease gone and it forgets it.
    fleet[0].renew().await.expect("renew");
    assert_eq!(fleet[0].holding(), None);
    let report = fleet[1].report().await.expect("report");
    assert_eq!(report.nodes.len(), 2);
    let a = report
        .nodes
        .iter()
        .find(|n| n.node_id == fleet[0].node().to_string())
        .expect("node a listed");
    assert!(a.stale, "{a:?}");
    assert!(report.nodes.iter().filter(|n| n.stale).count() == 1);
    let lease = report.lease.expect("a lease");
    assert_eq!(lease.node_id, fleet[1].node().to_string());
    // A node that says it stopped is not stale, however long ago it spoke.
    fleet[0].heartbeat(&beat("stopped")).await.expect("stopped");
    sqlx::query("UPDATE aihummer_fleet.nodes SET last_seen = now() - interval '1 minute'")
        .execute(&pool)
        .await
        .expect("age");
    let report = fleet[1].report().await.expect("report");
    let a = report
        .nodes
        .iter()
        .find(|n| n.node_id == fleet[0].node().to_string())
        .expect("node a listed");
    assert!(!a.stale && a.state == "stopped", "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_cut_a_permit_waits_within_seconds_and_never_grants() {
    let db = TestDb::create().await;
    let mut proxy = Proxy::new();
    proxy.start().await;
    let fleet = Arc::new(Fleet::new(&proxy.url(&db), NodeId::ephemeral()).expect("fleet"));
    let coordination = Coordination {
        window: None,
        fleet: Some(fleet.clone()),
    };
    assert_eq!(
        coordination.permit(&v("1.1.0")).await,
        Permit::Granted { lease: true }
    );
    fleet.release().await.expect("release");
    proxy.stop().await;
    let asked = Instant::now();
    let permit = coordination.permit(&v("1.1.0")).await;
    let took = asked.elapsed();
    println!("permit with the database cut after {took:?}: {permit:?}");
    let Permit::Wait { reason, .. } = permit else {
        panic!("no grant without the database: {permit:?}");
    };
    assert!(reason.contains("AIHUMMER_DATABASE_URL"), "{reason}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    proxy.start().await;
    let granted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if coordination.permit(&v("1.1.0")).await == (Permit::Granted { lease: true }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(granted.is_ok(), "granted again once the database is back");
}
