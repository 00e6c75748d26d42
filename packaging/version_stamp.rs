// Stamps the binary's version: `AIHUMMER_BUILD_VERSION` when a release pipeline (or a
// test) sets it, the package version otherwise. An invalid stamp fails the build, so a
// binary can never report a version the updater cannot compare.

/// Emits `AIHUMMER_VERSION` for `env!` and fails the build on a stamp that is not SemVer.
fn stamp_version() {
    println!("cargo::rerun-if-env-changed=AIHUMMER_BUILD_VERSION");
    let version = std::env::var("AIHUMMER_BUILD_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    if let Err(err) = semver::Version::parse(&version) {
        panic!("AIHUMMER_BUILD_VERSION={version:?} is not valid SemVer: {err}");
    }
    println!("cargo::rustc-env=AIHUMMER_VERSION={version}");
}
