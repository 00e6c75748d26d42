//! Fleet rollouts through PostgreSQL: three supervisors (three state dirs, one database) in
//! `apply` mode behind the shipped HAProxy configuration, under a steady load of keep-alive
//! and fresh-connection clients through the proxy and signed inbound messages (25/s), while
//! a loopback CDN offers a new version. Throughout, a watcher samples every node's state and
//! every gateway's leadership: never two nodes handing off at once, never two leaders in a
//! sample; the migrations are applied once; and every inbound message gets exactly one
//! reply, one body per idempotency key.
//!
//! - an automatic rollout: every node ends on the new version, one at a time, 0 failures;
//! - a bad release (its gateway dies two seconds after every start, after passing its
//!   gate): the node that took it rolls back and halts it, the others never install it;
//! - a 50% staged rollout installs on the nodes whose cohort is inside it, and only there,
//!   until it is widened to 100%;
//! - a release that adds a migration: once the first node applied it, a node still on the
//!   old version starts a new old gateway on the newer schema, and every node ends on the
//!   new version.
//!
//! Needs `haproxy` (Debian's package; `.ci/run` installs it): skipped with a loud message
//! when it is missing, and failed instead under `CI=true`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aihummer::fleet::node;
use aihummer_tests::fleet::{Haproxy, Node, Watch, haproxy_or_skip, migrations_applied_once};
use aihummer_tests::supervisor::{Load, Sample};
use aihummer_tests::update::{stamped_gateway, stamped_gateway_with_migration};
use aihummer_tests::updating::{Offering, fake_gateway};
use aihummer_tests::{INBOUND_SECRET, Receiver, TestDb, free_port, post_inbound, wait_for};

const WORKSPACE: &str = "2b1f5d8e-3c4a-4e6f-9a7b-0c1d2e3f4a5b";
use nix::sys::signal::Signal;
use serde_json::Value;

/// Three nodes on 1.0.0 behind HAProxy under load, a CDN offering 1.0.0, and a watcher.
struct Fleet {
    db: TestDb,
    nodes: Vec<Node>,
    proxy: Haproxy,
    load: Load,
    watch: Watch,
    offering: Offering,
    receiver: Receiver,
    inbound: Inbound,
}

/// Signed inbound messages through the proxy, 25 a second, until stopped: each must get
/// exactly one reply, with one body per idempotency key.
struct Inbound {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Inbound {
    fn start(url: String) -> Inbound {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let client = aihummer_tests::http();
            let mut sent = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let id = format!("m-{}", sent.len());
                let message =
                    serde_json::json!({"channel": "sms", "external_id": id, "text": "hi"});
                let (status, body) = post_inbound(&client, &url, &message, Some(&id))
                    .await
                    .expect("post through the proxy");
                assert_eq!(status, 200, "{body}");
                sent.push(id);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            sent
        });
        Inbound { stop, task }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("inbound sender")
    }
}

impl Fleet {
    /// Starts the fleet with `soak` as the soak window; `node_ids`, if given, are written
    /// into the nodes' state dirs first (so their cohorts are known).
    async fn start(
        haproxy: &str,
        soak: &str,
        node_ids: Option<[String; 3]>,
        extra: &[(&str, &str)],
    ) -> Fleet {
        let db = TestDb::create().await;
        let receiver = Receiver::start(&[]).await;
        let hook = receiver.url();
        let old = stamped_gateway("1.0.0");
        let offering = Offering::start(&old, "1.0.0").await;
        let base = offering.base_url();
        let old = old.to_str().expect("utf-8 path").to_string();
        let url = db.url();
        let mut env = vec![
            ("AIHUMMER_DATABASE_URL", url.as_str()),
            ("AIHUMMER_GATEWAY_BIN", old.as_str()),
            ("AIHUMMER_AUTO_UPDATE", "apply"),
            ("AIHUMMER_DOWNLOAD_BASE_URL", base.as_str()),
            ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
            ("AIHUMMER_UPDATE_INTERVAL", "1h"),
            ("AIHUMMER_SOAK_WINDOW", soak),
            ("AIHUMMER_SHUTDOWN_DELAY", "2s"),
            ("AIHUMMER_DRAIN_TIMEOUT", "5s"),
            ("AIHUMMER_READY_TIMEOUT", "20s"),
            ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
            ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
            ("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str()),
        ];
        env.extend_from_slice(extra);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let state = tempfile::tempdir().expect("tempdir");
            if let Some(ids) = &node_ids {
                std::fs::write(state.path().join(node::FILE), &ids[i]).expect("write node-id");
            }
            nodes.push(Node::start(free_port(), state, &env));
        }
        for node in &nodes {
            node.supervisor.wait_serving(Duration::from_secs(60)).await;
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let proxy = Haproxy::start(haproxy, &ports).await;
        let load = Load::start(&proxy.url("/v1/ping"), 4, 2, 1_000_000);
        let inbound = Inbound::start(proxy.url(""));
        let watch = Watch::start(
            &nodes
                .iter()
                .map(|n| (n.supervisor.socket.clone(), n.port))
                .collect::<Vec<_>>(),
        );
        Fleet {
            db,
            nodes,
            proxy,
            load,
            watch,
            offering,
            receiver,
            inbound,
        }
    }

    /// SIGHUP to every node: check now.
    fn check_now(&self) {
        for node in &self.nodes {
            node.supervisor.signal(Signal::SIGHUP);
        }
    }

    async fn fleet_status(&self) -> Value {
        let out = self.nodes[0]
            .supervisor
            .cli(&["fleet", "status", "--json"])
            .await;
        assert!(
            out.status.success(),
            "fleet status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("fleet status is JSON")
    }

    /// Stops the load and the watcher; asserts the invariants every rollout keeps and
    /// returns the samples.
    async fn finish(self, what: &str, started: Instant, migrations_added: usize) -> Vec<Sample> {
        let sent = self.inbound.stop().await;
        let samples = self.load.stop().await;
        let seen = self.watch.stop();
        let failures: Vec<&String> = samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().err())
            .collect();
        let rotation = self.proxy.rotation_changes();
        println!(
            "{what}: {:?} in all; {} requests through haproxy, {} failed; {} watch rounds; handoffs {:?}; rotation changes {rotation:?}",
            started.elapsed(),
            samples.len(),
            failures.len(),
            seen.rounds,
            seen.handoffs,
        );
        assert!(
            failures.is_empty(),
            "failed requests: {:?}\nhaproxy:\n{}",
            &failures[..failures.len().min(3)],
            self.proxy.log()
        );
        assert!(
            seen.overlapping_handoffs().is_empty(),
            "two nodes handed off at once: {:?}",
            seen.overlapping_handoffs()
        );
        assert_eq!(seen.two_leaders, 0, "two gateways led at once");
        assert!(seen.rounds > 10, "the watcher sampled: {}", seen.rounds);
        migrations_applied_once(&self.db.pool().await, migrations_added).await;
        one_reply_each(&self.receiver, &sent).await;
        samples
    }
}

/// Every message in `sent` got its reply, each reply kept one idempotency key and one body
/// across its attempts, and no other reply arrived.
async fn one_reply_each(receiver: &Receiver, sent: &[String]) {
    wait_for(Duration::from_secs(60), "every reply delivered", || async {
        (receiver.delivered_keys().len() >= sent.len()).then_some(())
    })
    .await;
    let deliveries = receiver.deliveries();
    let mut keys_by_message = BTreeMap::<String, BTreeSet<String>>::new();
    let mut bodies_by_key = BTreeMap::<String, BTreeSet<String>>::new();
    for delivery in &deliveries {
        let message = delivery.body["external_id"].as_str().unwrap_or_default();
        keys_by_message
            .entry(message.to_string())
            .or_default()
            .insert(delivery.key.clone());
        bodies_by_key
            .entry(delivery.key.clone())
            .or_default()
            .insert(delivery.body.to_string());
    }
    let expected: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = keys_by_message.keys().map(String::as_str).collect();
    assert_eq!(
        got, expected,
        "a reply for every message sent, and for no other"
    );
    for (message, keys) in &keys_by_message {
        assert_eq!(keys.len(), 1, "{message}: one reply: {keys:?}");
    }
    for (key, bodies) in &bodies_by_key {
        assert_eq!(
            bodies.len(),
            1,
            "{key}: one body across attempts: {bodies:?}"
        );
    }
    println!(
        "{} inbound messages through the proxy, {} deliveries, {} replies, one body each",
        sent.len(),
        deliveries.len(),
        bodies_by_key.len()
    );
}

fn installed(state: &Path, version: &str) -> bool {
    state.join("versions").join(version).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rollout_upgrades_one_node_at_a_time_with_no_failed_request() {
    let Some(haproxy) = haproxy_or_skip() else {
        return;
    };
    let fleet = Fleet::start(haproxy, "3s", None, &[]).await;
    fleet
        .offering
        .publish(&stamped_gateway("1.1.0"), "1.1.0")
        .await;
    let started = Instant::now();
    fleet.check_now();
    let upgraded = std::sync::Mutex::new(vec![None; 3]);
    wait_for(
        Duration::from_secs(120),
        "every node on 1.1.0 and the lease given back",
        || async {
            for (i, node) in fleet.nodes.iter().enumerate() {
                if node.serving().await.as_deref() == Some("1.1.0") {
                    let mut upgraded = upgraded.lock().ok()?;
                    upgraded[i].get_or_insert(started.elapsed());
                }
            }
            let all = upgraded.lock().ok()?.iter().all(Option::is_some);
            let status = fleet.fleet_status().await;
            (all && status["lease"].is_null()).then_some(())
        },
    )
    .await;
    let upgraded_at = upgraded.into_inner().expect("lock");
    println!("each node serving 1.1.0 after {upgraded_at:?}");
    let status = fleet.fleet_status().await;
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(nodes.iter().all(|n| n["version"] == "1.1.0"), "{status}");
    assert_eq!(status["halted"], serde_json::json!([]), "{status}");
    let mut times: Vec<Duration> = upgraded_at.into_iter().flatten().collect();
    times.sort();
    assert!(
        times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_secs(3)),
        "each node waited for the one before to soak (3s): {times:?}"
    );
    let rotation = fleet.proxy.rotation_changes();
    assert!(
        rotation.is_empty(),
        "a handoff keeps the node in rotation: {rotation:?}"
    );
    fleet
        .finish("automatic rollout of 3 nodes", started, 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crash_loops_is_rolled_back_by_one_node_and_halted_for_all() {
    let Some(haproxy) = haproxy_or_skip() else {
        return;
    };
    let fleet = Fleet::start(haproxy, "60s", None, &[]).await;
    let scripts = tempfile::tempdir().expect("tempdir");
    let dying = fake_gateway(
        scripts.path(),
        "1.1.0",
        &format!(
            "( exec 3>&- 4>&- 5>&-; sleep 2; kill -9 $$ ) &\nexec {}",
            stamped_gateway("1.1.0").display()
        ),
    );
    fleet.offering.publish(&dying, "1.1.0").await;
    let started = Instant::now();
    fleet.check_now();
    let status = wait_for(
        Duration::from_secs(120),
        "1.1.0 halted fleet-wide",
        || async {
            let status = fleet.fleet_status().await;
            let halted = status["halted"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["version"] == "1.1.0"));
            halted.then_some(status)
        },
    )
    .await;
    let halted_by = status["halted"][0]["node_id"]
        .as_str()
        .expect("node id")
        .to_string();
    println!("halted after {:?}: {}", started.elapsed(), status["halted"]);
    let mut first = None;
    for (i, node) in fleet.nodes.iter().enumerate() {
        let me = node.supervisor.status().await.expect("status");
        if me["node"]["id"] == halted_by.as_str() {
            first = Some(i);
        }
    }
    let first = first.expect("the halting node is one of the three");
    wait_for(
        Duration::from_secs(60),
        "the first node back on 1.0.0",
        || async {
            let status = fleet.nodes[first].supervisor.status().await?;
            (status["active"]["version"] == "1.0.0" && status["state"] == "running").then_some(())
        },
    )
    .await;
    // The others looked again since the halt, and stay where they are.
    fleet.check_now();
    for (i, node) in fleet.nodes.iter().enumerate().filter(|(i, _)| *i != first) {
        let line = node
            .supervisor
            .wait_check_result("halted fleet-wide", Duration::from_secs(60))
            .await;
        println!("node {}: {line}", i + 1);
        assert_eq!(node.serving().await.as_deref(), Some("1.0.0"));
        assert!(
            !installed(&node.state_dir(), "1.1.0"),
            "node {} never staged the halted version",
            i + 1
        );
        let refused = node.supervisor.cli(&["update"]).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("--version 1.1.0"),
            "a plain update refuses a halted version and says how to override: {stderr}"
        );
    }
    fleet.finish("bad release halted", started, 0).await;
}

/// Node ids whose cohorts are, in order: inside 50%, outside, outside.
fn ids_split_at_50() -> [String; 3] {
    let pick = |inside: bool| loop {
        let id = uuid::Uuid::new_v4().to_string();
        if (node::cohort(&id) < 50) == inside {
            return id;
        }
    };
    [pick(true), pick(false), pick(false)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_percent_rollout_installs_only_on_the_nodes_inside_it_until_widened() {
    let Some(haproxy) = haproxy_or_skip() else {
        return;
    };
    let fleet = Fleet::start(haproxy, "2s", Some(ids_split_at_50()), &[]).await;
    let cohorts = [
        fleet.nodes[0].cohort().await,
        fleet.nodes[1].cohort().await,
        fleet.nodes[2].cohort().await,
    ];
    println!("cohorts {cohorts:?}");
    assert!(cohorts[0] < 50 && cohorts[1] >= 50 && cohorts[2] >= 50);
    let new = stamped_gateway("1.1.0");
    fleet.offering.publish_rollout(&new, "1.1.0", 50).await;
    let started = Instant::now();
    fleet.check_now();
    wait_for(
        Duration::from_secs(60),
        "the node inside the rollout on 1.1.0",
        || async { (fleet.nodes[0].serving().await.as_deref() == Some("1.1.0")).then_some(()) },
    )
    .await;
    for node in &fleet.nodes[1..] {
        let line = node
            .supervisor
            .wait_check_result("rolling out to 50%", Duration::from_secs(30))
            .await;
        println!("{line}");
        assert_eq!(node.serving().await.as_deref(), Some("1.0.0"));
        assert!(!installed(&node.state_dir(), "1.1.0"));
    }
    // Widened to every node: the other two follow, one at a time.
    fleet.offering.publish_rollout(&new, "1.1.0", 100).await;
    fleet.check_now();
    wait_for(Duration::from_secs(120), "every node on 1.1.0", || async {
        for node in &fleet.nodes {
            (node.serving().await.as_deref() == Some("1.1.0")).then_some(())?;
        }
        Some(())
    })
    .await;
    fleet.finish("50% then 100% rollout", started, 0).await;
}

/// The new release's migration: expand only (a nullable column and a table), so the old
/// version keeps working on the newer schema.
const EXPAND: &str = "ALTER TABLE inbound_messages ADD COLUMN IF NOT EXISTS received_via text;
CREATE TABLE IF NOT EXISTS rollout_expand_check (id bigint PRIMARY KEY);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_adding_a_migration_rolls_out_while_old_nodes_serve_on_the_newer_schema() {
    let Some(haproxy) = haproxy_or_skip() else {
        return;
    };
    // A soak long enough that the operator's restart below ends well inside it, before
    // the next node's turn, however busy the machine.
    let fleet = Fleet::start(haproxy, "12s", None, &[]).await;
    let new = stamped_gateway_with_migration("1.1.0", "0900_rollout_expand_check.sql", EXPAND);
    fleet.offering.publish(&new, "1.1.0").await;
    let started = Instant::now();
    fleet.check_now();
    let pool = fleet.db.pool().await;
    wait_for(
        Duration::from_secs(60),
        "the first node to apply the new migration",
        || async {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE version = 900")
                    .fetch_optional(&pool)
                    .await
                    .ok()?;
            applied.map(|_| ())
        },
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "the first node serving 1.1.0, its handoff over (and soaking)",
        || async {
            for node in &fleet.nodes {
                let status = node.supervisor.status().await?;
                if status["active"]["version"] == "1.1.0" && status["state"] == "running" {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    // A node still on 1.0.0 starts a new gateway on the newer schema: a restart hands off
    // to the old version again, which must become ready and serve. (Operator restarts are
    // not coordinated; this one runs while the first node soaks, between handoffs.)
    let mut old_node = None;
    for node in &fleet.nodes {
        if node.serving().await.as_deref() == Some("1.0.0") {
            old_node = Some(node);
            break;
        }
    }
    let old_node = old_node.expect("a node still on 1.0.0 while the first soaks");
    let restart = old_node.supervisor.cli(&["restart", "--json"]).await;
    assert!(
        restart.status.success(),
        "an old gateway starts on the newer schema: {}",
        String::from_utf8_lossy(&restart.stderr)
    );
    println!(
        "1.0.0 restarted on the newer schema after {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&restart.stdout).trim()
    );
    wait_for(Duration::from_secs(120), "every node on 1.1.0", || async {
        for node in &fleet.nodes {
            (node.serving().await.as_deref() == Some("1.1.0")).then_some(())?;
        }
        Some(())
    })
    .await;
    fleet.finish("rollout adding a migration", started, 1).await;
}
