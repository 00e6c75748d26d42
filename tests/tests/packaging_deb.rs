//! The `.deb`: `packaging/build-deb.sh` (cargo-deb, on the debug binaries the suite built)
//! makes a package whose contents, conffiles and maintainer scripts are what an operator
//! needs. Runs only where `cargo deb` is installed; in CI, where `.ci/run` installs it, a
//! missing `cargo deb` fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use aihummer_tests::packaging::{packaging_dir, tool_available};

/// Runs `dpkg-deb args deb` and returns its stdout.
fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package into `out` and returns its path.
fn build(out: &Path) -> PathBuf {
    let result = Command::new("sh")
        .arg(packaging_dir().join("build-deb.sh"))
        // Faster compression: the suite packages unoptimised binaries.
        .args(["--fast", "--output"])
        .arg(out)
        .env("PROFILE", "dev")
        .env("CARGO_INCREMENTAL", "0")
        .output()
        .expect("run build-deb.sh");
    assert!(
        result.status.success(),
        "build-deb.sh failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read_dir(out)
        .expect("output dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in the output dir")
}

/// What the package must hold: (path without the leading `.`, mode as `ls` shows it).
const CONTENTS: &[(&str, &str)] = &[
    ("/usr/bin/aihummer", "-rwxr-xr-x"),
    ("/usr/bin/aihummer-gateway", "-rwxr-xr-x"),
    ("/usr/bin/aihummer-publish", "-rwxr-xr-x"),
    ("/usr/lib/systemd/system/aihummer.service", "-rw-r--r--"),
    ("/usr/lib/systemd/system/aihummer.socket", "-rw-r--r--"),
    ("/etc/aihummer/aihummer.env", "-rw-r-----"),
    ("/usr/share/aihummer/bootstrap.sql", "-rw-r--r--"),
    ("/usr/share/doc/aihummer/aihummer.env.example", "-rw-r--r--"),
    ("/usr/share/man/man1/aihummer.1", "-rw-r--r--"),
    ("/usr/share/man/man1/aihummer-update.1", "-rw-r--r--"),
    ("/usr/share/man/man1/aihummer-publish.1", "-rw-r--r--"),
    (
        "/usr/share/bash-completion/completions/aihummer",
        "-rw-r--r--",
    ),
    (
        "/usr/share/bash-completion/completions/aihummer-publish",
        "-rw-r--r--",
    ),
    ("/usr/share/zsh/vendor-completions/_aihummer", "-rw-r--r--"),
    (
        "/usr/share/fish/vendor_completions.d/aihummer.fish",
        "-rw-r--r--",
    ),
];

#[test]
fn the_deb_holds_the_binaries_units_conffile_man_pages_and_completions_and_enables_without_starting()
 {
    if !tool_available(
        "cargo",
        &["deb", "--version"],
        "cargo install cargo-deb --locked",
    ) || !tool_available("dpkg-deb", &["--version"], "Debian package dpkg")
    {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let deb = build(out.path());

    let listing = dpkg_deb(&["--contents"], &deb);
    for (path, mode) in CONTENTS {
        // A man page may be stored compressed.
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")) || l.ends_with(&format!(".{path}.gz")));
        let line = line.unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert!(line.starts_with(mode), "{path}: {line}");
    }
    assert!(
        !listing.contains("aihummer-generate"),
        "the hidden generate subcommand has no man page"
    );

    let info = tempfile::tempdir().expect("tempdir");
    let status = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(info.path())
        .status()
        .expect("dpkg-deb --control");
    assert!(status.success());
    let read = |name: &str| std::fs::read_to_string(info.path().join(name)).unwrap_or_default();
    assert!(
        read("control").contains("Package: aihummer"),
        "{}",
        read("control")
    );
    assert_eq!(read("conffiles").trim(), "/etc/aihummer/aihummer.env");
    let postinst = read("postinst");
    for needed in [
        "useradd --system",
        "groupadd --system aihummer-admin",
        "/var/lib/aihummer",
        "deb-systemd-helper enable aihummer.service",
        "deb-systemd-helper enable aihummer.socket",
    ] {
        assert!(
            postinst.contains(needed),
            "postinst lacks {needed}:\n{postinst}"
        );
    }
    assert!(
        !postinst.contains("deb-systemd-invoke start") && !postinst.contains("systemctl start"),
        "installing enables the units, it never starts them:\n{postinst}"
    );
    let postrm = read("postrm");
    let purge = postrm
        .find("if [ \"$1\" = purge ]")
        .expect("a purge branch");
    let wipe = postrm
        .find("rm -rf /var/lib/aihummer")
        .expect("the data is removed");
    assert!(wipe > purge, "only purge removes the data:\n{postrm}");
}
