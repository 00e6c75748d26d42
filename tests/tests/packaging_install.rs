//! `packaging/install.sh` into a throwaway root: the layout and modes an operator gets,
//! idempotence (an edited env file survives a second run), the refusal when not root,
//! `--uninstall` keeping data and settings and `--purge` removing them; and
//! `systemd-analyze verify` on the installed units, with their man page.

use std::path::Path;
use std::process::{Command, Output};

use aihummer_tests::packaging::{is_root, mode, packaging_dir, tool_available};
use aihummer_tests::target_dir;

/// Runs install.sh with `args` into `root` (DESTDIR), from the workspace's built binaries.
fn install(root: &Path, args: &[&str]) -> Output {
    let out = Command::new("sh")
        .arg(packaging_dir().join("install.sh"))
        .args(["--prefix", "/usr", "--bin-dir"])
        .arg(target_dir())
        .args(args)
        .env("DESTDIR", root)
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file install.sh writes, with its mode.
const LAYOUT: &[(&str, u32)] = &[
    ("usr/bin/aihummer", 0o755),
    ("usr/bin/aihummer-gateway", 0o755),
    ("usr/bin/aihummer-publish", 0o755),
    ("etc/systemd/system/aihummer.service", 0o644),
    ("etc/systemd/system/aihummer.socket", 0o644),
    ("etc/aihummer", 0o750),
    ("etc/aihummer/aihummer.env", 0o640),
    ("var/lib/aihummer", 0o755),
    ("usr/share/aihummer/bootstrap.sql", 0o644),
    ("usr/share/doc/aihummer/aihummer.env.example", 0o644),
    ("usr/share/man/man1/aihummer.1", 0o644),
    ("usr/share/man/man1/aihummer-run.1", 0o644),
    ("usr/share/man/man1/aihummer-update.1", 0o644),
    ("usr/share/man/man1/aihummer-restart.1", 0o644),
    ("usr/share/man/man1/aihummer-publish.1", 0o644),
    ("usr/share/man/man1/aihummer-publish-release.1", 0o644),
    ("usr/share/bash-completion/completions/aihummer", 0o644),
    (
        "usr/share/bash-completion/completions/aihummer-publish",
        0o644,
    ),
    ("usr/share/zsh/site-functions/_aihummer", 0o644),
    ("usr/share/fish/vendor_completions.d/aihummer.fish", 0o644),
];

/// Files `--uninstall` removes (everything but the settings and the data).
const PROGRAM_FILES: &[&str] = &[
    "usr/bin/aihummer",
    "usr/bin/aihummer-gateway",
    "usr/bin/aihummer-publish",
    "etc/systemd/system/aihummer.service",
    "etc/systemd/system/aihummer.socket",
    "usr/share/aihummer",
    "usr/share/man/man1/aihummer.1",
    "usr/share/man/man1/aihummer-update.1",
    "usr/share/man/man1/aihummer-publish.1",
    "usr/share/bash-completion/completions/aihummer",
    "usr/share/zsh/site-functions/_aihummer",
];

#[test]
fn the_installer_lays_out_a_root_with_modes_keeps_an_edited_env_file_and_uninstalls() {
    if !is_root("install.sh refuses to run otherwise") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let first = install(root.path(), &[]);
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.contains("Next steps"), "{said}");
    for (path, expected) in LAYOUT {
        let got = mode(&root.path().join(path));
        assert_eq!(
            got, *expected,
            "{path}: mode {got:o}, expected {expected:o}"
        );
    }
    // The units point at the prefix's binary; no man page drift: they come from the CLI.
    let service = std::fs::read_to_string(root.path().join("etc/systemd/system/aihummer.service"))
        .expect("service");
    assert!(
        service.contains("ExecStart=/usr/bin/aihummer run"),
        "{service}"
    );
    assert!(service.contains("Requires=aihummer.socket"), "{service}");
    let page = std::fs::read_to_string(root.path().join("usr/share/man/man1/aihummer.1"))
        .expect("man page");
    for sub in ["run", "status", "update", "rollback", "restart"] {
        assert!(page.contains(sub), "aihummer.1 lacks {sub}");
    }
    assert!(
        !page.contains("generate"),
        "the hidden subcommand is not documented"
    );

    // An operator's edits to the env file survive a second run, which changes nothing else.
    let env = root.path().join("etc/aihummer/aihummer.env");
    std::fs::write(&env, "AIHUMMER_LOG=debug\n").expect("edit env");
    let second = install(root.path(), &[]);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("kept your"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&env).expect("env"),
        "AIHUMMER_LOG=debug\n"
    );
    for (path, expected) in LAYOUT {
        assert_eq!(
            mode(&root.path().join(path)),
            *expected,
            "{path} after a second run"
        );
    }

    std::fs::write(root.path().join("var/lib/aihummer/state.json"), "{}").expect("data");
    let removed = install(root.path(), &["--uninstall"]);
    assert!(
        String::from_utf8_lossy(&removed.stdout).contains("kept its data"),
        "{}",
        String::from_utf8_lossy(&removed.stdout)
    );
    for path in PROGRAM_FILES {
        assert!(
            !root.path().join(path).exists(),
            "{path} survived --uninstall"
        );
    }
    assert!(env.exists(), "--uninstall kept the env file");
    assert!(
        root.path().join("var/lib/aihummer/state.json").exists(),
        "--uninstall kept the data"
    );

    install(root.path(), &["--uninstall", "--purge"]);
    assert!(
        !root.path().join("etc/aihummer").exists(),
        "--purge removed the settings"
    );
    assert!(
        !root.path().join("var/lib/aihummer").exists(),
        "--purge removed the data"
    );
}

#[test]
fn the_installer_refuses_to_run_when_not_root() {
    if !tool_available(
        "setpriv",
        &["--version"],
        "util-linux runs the installer as nobody",
    ) || !is_root("only root can drop to another user")
    {
        return;
    }
    // A copy nobody can read: the test's own temp dirs are private.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("install.sh");
    std::fs::copy(packaging_dir().join("install.sh"), &script).expect("copy");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    for path in [dir.path(), &script, &root] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh"])
        .arg(&script)
        .env("DESTDIR", &root)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(
        std::fs::read_dir(&root).expect("root").next().is_none(),
        "nothing was written"
    );
}

#[test]
fn systemd_analyze_verifies_the_installed_units_and_their_man_page() {
    if !tool_available("systemd-analyze", &["--version"], "Debian package systemd")
        || !tool_available("man", &["--version"], "Debian package man-db")
        || !is_root("install.sh refuses to run otherwise")
    {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    install(root.path(), &[]);
    // The units name /usr/bin; on this host that binary is the one in the throwaway root.
    let units = tempfile::tempdir().expect("tempdir");
    let bin = root.path().join("usr/bin/aihummer");
    let mut paths = Vec::new();
    for unit in ["aihummer.socket", "aihummer.service"] {
        let text = std::fs::read_to_string(root.path().join("etc/systemd/system").join(unit))
            .expect("unit")
            .replace("/usr/bin/aihummer", bin.to_str().expect("utf-8"));
        let path = units.path().join(unit);
        std::fs::write(&path, text).expect("write unit");
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        // Documentation=man:aihummer(1) must resolve to the generated page.
        .env("MANPATH", root.path().join("usr/share/man"))
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
