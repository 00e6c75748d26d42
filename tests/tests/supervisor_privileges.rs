//! Privilege separation, end to end: a root supervisor runs its gateway as
//! `AIHUMMER_GATEWAY_USER` with that user's groups, unable to touch the install dir and
//! without the supervisor's own settings; the control socket refuses the gateway (by uid,
//! and by process group when the supervisor is not root) and lets `AIHUMMER_ADMIN_GROUP`
//! in; the CLI refuses a socket served by a user it does not trust. The suite makes real
//! users and groups, so it needs root (CI runs as root); as anyone else each test says it
//! was skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use aihummer_tests::accounts::{TestGroup, TestUser};
use aihummer_tests::supervisor::{Supervisor, environ};
use aihummer_tests::{binary, get_json, http, runnable, wait_for};
use serde_json::Value;
use tempfile::TempDir;

const SERVING: Duration = Duration::from_secs(30);

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: this suite makes users and groups, so it runs as root only");
    }
    root
}

/// A scratch directory other users may pass through (a tempdir is 0700).
fn open_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Runs the `aihummer` CLI against `socket`: as `user` (root when `None`), with `env`
/// added, in process group `pgroup` if given.
async fn cli_as(
    user: Option<&TestUser>,
    socket: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    pgroup: Option<u32>,
) -> Output {
    let mut cmd = match user {
        Some(user) => {
            let mut cmd = tokio::process::Command::new("setpriv");
            cmd.args(user.setpriv()).arg(runnable("aihummer"));
            cmd
        }
        None => tokio::process::Command::new(binary("aihummer")),
    };
    cmd.args(args)
        .env("AIHUMMER_SUPERVISOR_SOCKET", socket)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if let Some(pgroup) = pgroup {
        cmd.process_group(i32::try_from(pgroup).expect("pid fits"));
    }
    cmd.output().await.expect("run the aihummer CLI")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The values of a `/proc/<pid>/status` line such as `Uid:` or `Groups:`.
fn status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"));
    line.split_whitespace()
        .map(|v| v.parse().expect("an id"))
        .collect()
}

/// The process group of `pid`.
fn pgid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat has a command name");
    rest.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("a pgid")
}

/// Owner, group and permission bits of `path`.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).expect("metadata");
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// Starts `aihummer run` as `user` in a directory it owns and waits, asking as that user,
/// until a gateway serves; returns the supervisor and the gateway's pid.
async fn start_as(user: &TestUser) -> (Supervisor, u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
    let (uid, gid) = (user.uid, user.gid);
    let sup = Supervisor::start_with(dir, &[], |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    });
    let pid = wait_for(
        SERVING,
        "a gateway of the unprivileged supervisor",
        || async {
            let out = cli_as(Some(user), &sup.socket, &["status", "--json"], &[], None).await;
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            let ready = status["state"] == "running" && status["active"]["state"] == "ready";
            ready
                .then(|| status["active"]["pid"].as_u64())??
                .try_into()
                .ok()
        },
    )
    .await;
    (sup, pid)
}

#[tokio::test]
async fn a_root_supervisor_runs_its_gateway_as_the_service_user_who_cannot_touch_the_install() {
    if !root() {
        return;
    }
    let extra = TestGroup::create("x");
    let gw = TestUser::create("gw", &[&extra]);
    let dir = open_dir();
    let state = dir.path().join("state");
    let sup = Supervisor::start_in(
        dir,
        &[
            ("AIHUMMER_GATEWAY_USER", &gw.name),
            ("AIHUMMER_STATE_DIR", state.to_str().unwrap()),
        ],
    );
    let pid = sup.wait_serving(SERVING).await;

    assert_eq!(status_ids(pid, "Uid:"), [gw.uid; 4], "{}", sup.logs());
    assert_eq!(status_ids(pid, "Gid:"), [gw.gid; 4]);
    let mut groups = vec![gw.gid, extra.gid];
    groups.sort_unstable();
    assert_eq!(
        status_ids(pid, "Groups:"),
        groups,
        "exactly the user's own groups"
    );
    let (code, body) = get_json(&http(), &sup.url("/v1/ping")).await.expect("ping");
    assert_eq!((code, body["pid"].as_u64()), (200, Some(u64::from(pid))));

    // It runs the installed copy, which it can execute but not change.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert!(exe.starts_with(state.join("versions")), "{exe:?}");
    let versions = state.join("versions");
    for dir in [&state, &versions, &exe.parent().unwrap().to_path_buf()] {
        assert_eq!(owner_and_mode(dir), (0, 0, 0o755), "{dir:?}");
    }
    assert_eq!(owner_and_mode(&exe), (0, 0, 0o755));
    let state_file = state.join("state.json");
    assert_eq!(owner_and_mode(&state_file), (0, 0, 0o600));
    let exe = exe.to_str().unwrap();
    assert!(gw.succeeds("test -x \"$1\"", &[exe]), "the user can run it");
    assert!(!gw.succeeds("echo evil >> \"$1\"", &[exe]));
    for path in [&state, &versions] {
        let file = path.join("evil");
        assert!(!gw.succeeds("touch \"$1\"", &[file.to_str().unwrap()]));
    }
    assert!(!gw.succeeds("cat \"$1\"", &[state_file.to_str().unwrap()]));
}

#[tokio::test]
async fn the_gateway_s_environment_holds_none_of_the_supervisor_s_settings() {
    if !root() {
        return;
    }
    let gw = TestUser::create("gw", &[]);
    let admin = TestGroup::create("adm");
    let dir = open_dir();
    let state = dir.path().join("state");
    let key = aihummer::publish::generate_keypair(None).expect("keypair");
    let sup = Supervisor::start_in(
        dir,
        &[
            ("AIHUMMER_GATEWAY_USER", &gw.name),
            ("AIHUMMER_ADMIN_GROUP", &admin.name),
            ("AIHUMMER_STATE_DIR", state.to_str().unwrap()),
            ("AIHUMMER_DOWNLOAD_BASE_URL", "https://127.0.0.1:9/releases"),
            ("AIHUMMER_AUTO_UPDATE", "off"),
            ("AIHUMMER_UPDATE_CHANNEL", "beta"),
            ("AIHUMMER_UPDATE_INTERVAL", "1h"),
            ("AIHUMMER_UPDATE_PUBKEY", key.public_key.trim_end()),
            ("AIHUMMER_SOME_GATEWAY_SETTING", "passes"),
        ],
    );
    let pid = sup.wait_serving(SERVING).await;
    let env = environ(pid);
    let names: Vec<&str> = env.iter().filter_map(|v| v.split('=').next()).collect();
    for hidden in [
        "AIHUMMER_SUPERVISOR_SOCKET",
        "AIHUMMER_UPDATE_PUBKEY",
        "AIHUMMER_UPDATE_CHANNEL",
        "AIHUMMER_UPDATE_INTERVAL",
        "AIHUMMER_DOWNLOAD_BASE_URL",
        "AIHUMMER_AUTO_UPDATE",
        "AIHUMMER_STATE_DIR",
        "AIHUMMER_GATEWAY_BIN",
        "AIHUMMER_GATEWAY_USER",
        "AIHUMMER_ADMIN_GROUP",
        "AIHUMMER_READY_TIMEOUT",
    ] {
        assert!(
            !names.contains(&hidden),
            "{hidden} reached the gateway: {env:?}"
        );
    }
    for kept in [
        "AIHUMMER_DRAIN_TIMEOUT=3s",
        "AIHUMMER_LOG=info",
        "AIHUMMER_SOME_GATEWAY_SETTING=passes",
        "HOME=/nonexistent",
    ] {
        assert!(env.iter().any(|v| v == kept), "{kept} is missing: {env:?}");
    }
    assert!(env.contains(&format!("USER={}", gw.name)), "{env:?}");
}

#[tokio::test]
async fn a_gateway_uid_process_is_refused_and_an_admin_group_member_is_let_in() {
    if !root() {
        return;
    }
    let admin = TestGroup::create("adm");
    // The gateway's user is put in the admin group by mistake: the socket file's mode then
    // lets it connect, and only the supervisor's own check stands in its way.
    let gw = TestUser::create("gw", &[&admin]);
    let operator = TestUser::create("op", &[&admin]);
    let stranger = TestUser::create("st", &[]);
    let sup = Supervisor::start_in(
        open_dir(),
        &[
            ("AIHUMMER_GATEWAY_USER", &gw.name),
            ("AIHUMMER_ADMIN_GROUP", &admin.name),
        ],
    );
    let pid = sup.wait_serving(SERVING).await;
    assert_eq!(owner_and_mode(&sup.socket), (0, admin.gid, 0o660));

    let out = cli_as(
        Some(&operator),
        &sup.socket,
        &["status", "--json"],
        &[],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["active"]["pid"].as_u64(), Some(u64::from(pid)));

    let out = cli_as(Some(&gw), &sup.socket, &["rollback"], &[], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is the gateway's user (AIHUMMER_GATEWAY_USER); a gateway may not control its supervisor"),
        "{}",
        stderr(&out)
    );
    let out = cli_as(Some(&gw), &sup.socket, &["restart"], &[], Some(pid)).await;
    assert!(
        stderr(&out).contains(&format!("runs in the gateway's process group {pid}")),
        "{}",
        stderr(&out)
    );
    let out = cli_as(Some(&stranger), &sup.socket, &["status"], &[], None).await;
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    // Nothing was restarted or rolled back by the refused clients.
    assert_eq!(sup.wait_serving(SERVING).await, pid);
}

#[tokio::test]
async fn an_unprivileged_supervisor_refuses_its_gateway_s_process_group_but_not_its_user() {
    if !root() {
        return;
    }
    let svc = TestUser::create("svc", &[]);
    let (sup, pid) = start_as(&svc).await;
    assert_eq!(status_ids(pid, "Uid:"), [svc.uid; 4]);
    assert_eq!(
        pgid(pid),
        pid,
        "the gateway leads a process group of its own"
    );

    let out = cli_as(Some(&svc), &sup.socket, &["status"], &[], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_as(Some(&svc), &sup.socket, &["restart"], &[], Some(pid)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "runs in the gateway's process group {pid}; a gateway may not control its supervisor"
        )),
        "{}",
        stderr(&out)
    );
    let still = cli_as(Some(&svc), &sup.socket, &["status", "--json"], &[], None).await;
    let status: Value = serde_json::from_slice(&still.stdout).expect("status json");
    assert_eq!(status["active"]["pid"].as_u64(), Some(u64::from(pid)));
}

#[tokio::test]
async fn the_cli_refuses_a_socket_served_by_a_user_it_does_not_trust() {
    if !root() {
        return;
    }
    let svc = TestUser::create("svc", &[]);
    let (sup, pid) = start_as(&svc).await;

    // Root's CLI trusts root, itself and the service user, here another name.
    let out = cli_as(None, &sup.socket, &["status"], &[], None).await;
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "{} is served by uid {}, which is not root, this user, nor the service user (AIHUMMER_GATEWAY_USER=aihummer); refusing to trust its answers",
        sup.socket.display(),
        svc.uid
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));

    let service = [("AIHUMMER_GATEWAY_USER", svc.name.as_str())];
    let out = cli_as(None, &sup.socket, &["status", "--json"], &service, None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["active"]["pid"].as_u64(), Some(u64::from(pid)));
}

#[tokio::test]
async fn the_unit_s_capabilities_are_enough_to_run_hand_off_and_stop_a_gateway_of_another_user() {
    if !root() {
        return;
    }
    let unit = include_str!("../../packaging/aihummer.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let setpriv = vec![
        "setpriv".to_string(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--".to_string(),
    ];
    let admin = TestGroup::create("adm");
    let gw = TestUser::create("gw", &[]);
    let dir = open_dir();
    let state = dir.path().join("state");
    let env = [
        ("AIHUMMER_GATEWAY_USER", gw.name.as_str()),
        ("AIHUMMER_ADMIN_GROUP", admin.name.as_str()),
        ("AIHUMMER_STATE_DIR", state.to_str().unwrap()),
    ];
    let mut sup = Supervisor::start_wrapped(dir, &env, &setpriv, |_| {});
    let first = sup.wait_serving(SERVING).await;
    assert_eq!(owner_and_mode(&sup.socket), (0, admin.gid, 0o660));
    assert_eq!(status_ids(first, "Uid:"), [gw.uid; 4], "{}", sup.logs());
    for field in ["CapPrm:", "CapEff:", "CapAmb:"] {
        let status = std::fs::read_to_string(format!("/proc/{first}/status")).unwrap();
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
        assert_eq!(value, Some(0), "the gateway's {field}");
    }

    // A handoff drains the old gateway: signalling a process of another uid takes CAP_KILL.
    let out = tokio::time::timeout(SERVING, sup.cli(&["restart", "--json"]))
        .await
        .unwrap_or_else(|_| panic!("the restart did not end; log:\n{}", sup.logs()));
    assert!(out.status.success(), "{}\n{}", stderr(&out), sup.logs());
    let second = sup.wait_serving(SERVING).await;
    assert_ne!(second, first);
    wait_for(SERVING, "the old gateway to be reaped", || async {
        (!aihummer_tests::supervisor::alive(first)).then_some(())
    })
    .await;
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    let status = sup.wait_exit(SERVING).await;
    assert!(status.success(), "{}", sup.logs());
    assert!(!aihummer_tests::supervisor::alive(second));
}

#[tokio::test]
async fn a_missing_gateway_user_stops_a_root_supervisor_with_an_error_naming_the_variable() {
    if !root() {
        return;
    }
    let missing = format!("ahtnone{}", std::process::id());
    let mut sup = Supervisor::start(&[("AIHUMMER_GATEWAY_USER", &missing)]);
    let status = sup.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let logs = sup.logs();
    assert!(
        logs.contains(&format!("AIHUMMER_GATEWAY_USER={missing}: no such user")),
        "{logs}"
    );
}
