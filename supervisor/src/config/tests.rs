//! Unit tests of `config`.

use super::*;

fn settings(vars: &[(&str, &str)], uid: u32) -> Result<Settings, ConfigError> {
    Settings::from_lookup(
        |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        },
        uid,
        Some(PathBuf::from("/opt/aihummer/bin")),
    )
}

#[test]
fn defaults_listen_on_port_8765_of_every_interface_with_documented_timeouts() {
    let s = settings(&[], 1000).unwrap();
    assert_eq!(s.addr, "0.0.0.0:8765".parse().unwrap());
    assert_eq!(s.ready_timeout, DEFAULT_READY_TIMEOUT);
    assert_eq!(s.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(
        (s.update_mode, s.update_channel),
        (UpdateMode::Off, Channel::Stable)
    );
    assert_eq!(s.update_interval, DEFAULT_UPDATE_INTERVAL);
}

#[test]
fn updates_default_to_check_only_once_a_cdn_is_configured() {
    let cdn = (
        "AIHUMMER_DOWNLOAD_BASE_URL",
        "https://releases.example.com/a",
    );
    let s = settings(&[cdn], 0).unwrap();
    assert_eq!(s.update_mode, UpdateMode::Check);
    assert_eq!(
        s.download_base_url.unwrap().as_str(),
        "https://releases.example.com/a"
    );
    let s = settings(
        &[
            cdn,
            ("AIHUMMER_AUTO_UPDATE", "apply"),
            ("AIHUMMER_STATE_DIR", "/var/lib/aihummer"),
            ("AIHUMMER_UPDATE_CHANNEL", "beta"),
            ("AIHUMMER_UPDATE_INTERVAL", "30m"),
            ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
        ],
        0,
    )
    .unwrap();
    assert_eq!(
        (s.update_mode, s.update_channel, s.update_interval),
        (UpdateMode::Apply, Channel::Beta, Duration::from_secs(1800))
    );
}

#[test]
fn each_bad_update_setting_is_an_error_naming_its_variable() {
    let cdn = (
        "AIHUMMER_DOWNLOAD_BASE_URL",
        "https://releases.example.com/",
    );
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[cdn, ("AIHUMMER_AUTO_UPDATE", "sometimes")],
            "AIHUMMER_AUTO_UPDATE",
        ),
        (
            &[cdn, ("AIHUMMER_UPDATE_CHANNEL", "nightly")],
            "AIHUMMER_UPDATE_CHANNEL",
        ),
        (
            &[("AIHUMMER_DOWNLOAD_BASE_URL", "ftp://x/")],
            "AIHUMMER_DOWNLOAD_BASE_URL",
        ),
        (
            &[("AIHUMMER_DOWNLOAD_BASE_URL", "http://releases.example.com/")],
            "AIHUMMER_DOWNLOAD_BASE_URL",
        ),
        (
            &[cdn, ("AIHUMMER_UPDATE_INTERVAL", "often")],
            "AIHUMMER_UPDATE_INTERVAL",
        ),
        (
            &[cdn, ("AIHUMMER_UPDATE_PUBKEY", "not-a-key")],
            "AIHUMMER_UPDATE_PUBKEY",
        ),
        (
            &[("AIHUMMER_AUTO_UPDATE", "check")],
            "AIHUMMER_DOWNLOAD_BASE_URL",
        ),
        (
            &[cdn, ("AIHUMMER_AUTO_UPDATE", "apply")],
            "AIHUMMER_STATE_DIR",
        ),
    ];
    for (vars, name) in cases {
        let err = settings(vars, 0).unwrap_err().to_string();
        assert!(err.contains(name), "{vars:?}: {err}");
    }
    let off = settings(&[("AIHUMMER_AUTO_UPDATE", "off")], 0).unwrap();
    assert_eq!(off.update_mode, UpdateMode::Off);
}

#[test]
fn an_empty_or_space_padded_setting_is_refused_by_name_not_taken_as_unset() {
    for (var, value) in [
        ("AIHUMMER_AUTO_UPDATE", ""),
        ("AIHUMMER_AUTO_UPDATE", " apply"),
        ("AIHUMMER_SUPERVISOR_SOCKET", " "),
        ("AIHUMMER_STATE_DIR", "/var/lib/aihummer "),
        ("AIHUMMER_UPDATE_MAX_SIZE", "1G "),
        ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", ""),
    ] {
        let err = settings(&[(var, value)], 0).unwrap_err().to_string();
        assert!(err.starts_with(var), "{var}={value:?}: {err}");
    }
}

#[test]
fn apply_without_a_key_is_refused_at_startup_unless_unsigned_is_allowed() {
    let cdn = (
        "AIHUMMER_DOWNLOAD_BASE_URL",
        "https://releases.example.com/",
    );
    let apply = [
        cdn,
        ("AIHUMMER_AUTO_UPDATE", "apply"),
        ("AIHUMMER_STATE_DIR", "/var/lib/aihummer"),
    ];
    let err = settings(&apply, 0).unwrap_err().to_string();
    assert!(
        err.contains("AIHUMMER_UPDATE_PUBKEY")
            && err.contains("AIHUMMER_UPDATE_ALLOW_UNSIGNED=true"),
        "{err}"
    );
    let mut allowed = apply.to_vec();
    allowed.push(("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"));
    assert_eq!(
        settings(&allowed, 0).unwrap().update_mode,
        UpdateMode::Apply
    );
    let keys = crate::publish::generate_keypair(None).unwrap();
    let line = keys.public_key.lines().nth(1).unwrap().to_string();
    let mut signed = apply.to_vec();
    signed.push(("AIHUMMER_UPDATE_PUBKEY", &line));
    assert_eq!(settings(&signed, 0).unwrap().update_mode, UpdateMode::Apply);
    // Check mode may stay unsigned: it only tells.
    let check = settings(&[cdn, ("AIHUMMER_AUTO_UPDATE", "check")], 0).unwrap();
    assert_eq!(check.update_mode, UpdateMode::Check);
}

#[test]
fn root_uses_the_run_directory_and_users_a_per_user_path() {
    assert_eq!(settings(&[], 0).unwrap().socket, PathBuf::from(ROOT_SOCKET));
    let user = settings(&[("XDG_RUNTIME_DIR", "/run/user/1000")], 1000).unwrap();
    assert_eq!(
        user.socket,
        PathBuf::from("/run/user/1000/aihummer/supervisor.sock")
    );
    let bare = settings(&[], 1000).unwrap();
    assert_eq!(
        bare.socket,
        PathBuf::from("/tmp/aihummer-1000/supervisor.sock")
    );
    let set = settings(&[("AIHUMMER_SUPERVISOR_SOCKET", "/x/s.sock")], 0).unwrap();
    assert_eq!(set.socket, PathBuf::from("/x/s.sock"));
}

#[test]
fn a_client_finds_the_unit_s_socket_when_it_may_use_it_whoever_it_is() {
    let vars = [("XDG_RUNTIME_DIR", "/run/user/1000")];
    let get = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let usable = |path: &Path| path == Path::new(ROOT_SOCKET);
    let unusable = |_: &Path| false;
    assert_eq!(
        client_socket_path(get, 1000, usable),
        PathBuf::from(ROOT_SOCKET)
    );
    assert_eq!(
        client_socket_path(get, 1000, unusable),
        PathBuf::from("/run/user/1000/aihummer/supervisor.sock")
    );
    assert_eq!(
        client_socket_path(get, 0, unusable),
        PathBuf::from(ROOT_SOCKET)
    );
    let set = |name: &str| (name == "AIHUMMER_SUPERVISOR_SOCKET").then(|| "/x.sock".into());
    assert_eq!(
        client_socket_path(set, 1000, usable),
        PathBuf::from("/x.sock")
    );
}

#[test]
fn the_supervisor_s_own_settings_are_kept_from_the_gateway_and_the_rest_pass() {
    for name in [
        "AIHUMMER_SUPERVISOR_SOCKET",
        "AIHUMMER_UPDATE_PUBKEY",
        "AIHUMMER_UPDATE_CHANNEL",
        "AIHUMMER_UPDATE_ALLOW_UNSIGNED",
        "AIHUMMER_DOWNLOAD_BASE_URL",
        "AIHUMMER_AUTO_UPDATE",
        "AIHUMMER_STATE_DIR",
        "AIHUMMER_GATEWAY_BIN",
        "AIHUMMER_GATEWAY_USER",
        "AIHUMMER_ADMIN_GROUP",
        "AIHUMMER_READY_TIMEOUT",
    ] {
        assert!(supervisor_only(name), "{name}");
    }
    for name in [
        "AIHUMMER_DRAIN_TIMEOUT",
        "AIHUMMER_DATABASE_URL",
        "AIHUMMER_DB_APP_URL",
        "AIHUMMER_INBOUND_SECRET",
        "AIHUMMER_REPLY_WEBHOOK_URL",
        "AIHUMMER_LOG",
        "AIHUMMER_GATEWAY_ADDR",
    ] {
        assert!(!supervisor_only(name), "{name}");
    }
}

#[test]
fn the_gateway_user_and_admin_group_default_to_the_packaged_names() {
    let s = settings(&[], 0).unwrap();
    assert_eq!(
        (s.gateway_user.as_str(), s.admin_group.as_str()),
        ("aihummer", "aihummer-admin")
    );
    let s = settings(
        &[
            ("AIHUMMER_GATEWAY_USER", "gw"),
            ("AIHUMMER_ADMIN_GROUP", "ops"),
        ],
        0,
    )
    .unwrap();
    assert_eq!(
        (s.gateway_user.as_str(), s.admin_group.as_str()),
        ("gw", "ops")
    );
}

#[test]
fn durations_take_humantime_and_bare_seconds() {
    let s = settings(
        &[
            ("AIHUMMER_READY_TIMEOUT", "500ms"),
            ("AIHUMMER_DRAIN_TIMEOUT", "7"),
        ],
        0,
    )
    .unwrap();
    assert_eq!(s.ready_timeout, Duration::from_millis(500));
    assert_eq!(s.drain_timeout, Duration::from_secs(7));
    let err = settings(&[("AIHUMMER_DRAIN_TIMEOUT", "soon")], 0).unwrap_err();
    assert!(err.to_string().contains("AIHUMMER_DRAIN_TIMEOUT"), "{err}");
}

#[test]
fn every_duration_setting_has_a_maximum_named_in_its_error() {
    for (var, max) in [
        ("AIHUMMER_READY_TIMEOUT", "1day"),
        ("AIHUMMER_DRAIN_TIMEOUT", "1h"),
        ("AIHUMMER_UPDATE_INTERVAL", "30days"),
    ] {
        let err = settings(&[(var, "1000000000000s")], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(var) && err.contains(&format!("maximum of {max}")),
            "{err}"
        );
        assert!(settings(&[(var, max)], 0).is_ok(), "{var}={max} is allowed");
    }
}

#[test]
fn a_bad_address_names_the_variable_and_the_value() {
    let err = settings(&[("AIHUMMER_GATEWAY_ADDR", "port-eighty")], 0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("AIHUMMER_GATEWAY_ADDR") && msg.contains("port-eighty"),
        "{msg}"
    );
}

#[test]
fn the_installed_current_version_wins_over_the_configured_binary() {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("versions/1.2.3");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join(GATEWAY_FILE), "").unwrap();
    let state = dir.path().to_str().unwrap();
    let mut s = settings(
        &[
            ("AIHUMMER_STATE_DIR", state),
            ("AIHUMMER_GATEWAY_BIN", "/usr/bin/gw"),
        ],
        0,
    )
    .unwrap();
    assert_eq!(s.gateway_binary().unwrap(), PathBuf::from("/usr/bin/gw"));
    let layout = crate::install::Layout::new(dir.path());
    let mut saved = layout.load_state().unwrap();
    layout
        .switch(&mut saved, &semver::Version::new(1, 2, 3))
        .unwrap();
    let chosen = s.gateway_binary().unwrap();
    assert!(
        chosen.ends_with("versions/1.2.3/aihummer-gateway"),
        "{chosen:?}"
    );
    s.state_dir = None;
    s.gateway_bin = Some(PathBuf::from("relative/gw"));
    assert!(s.gateway_binary().unwrap().is_absolute());
    s.gateway_bin = None;
    assert!(
        s.gateway_binary()
            .unwrap_err()
            .to_string()
            .contains("/opt/aihummer/bin")
    );
}
