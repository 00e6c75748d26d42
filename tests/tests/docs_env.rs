//! Docs and code kept honest: every `AIHUMMER_*` variable the binaries read (a string
//! literal `"AIHUMMER_..."` in non-test code under `common/src`, `gateway/src` and
//! `supervisor/src`) appears in `packaging/aihummer.env.example` and in a README table,
//! and every variable those document is read by the code. Also the README's key-generation
//! command, run as written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Read by the code but deliberately not operator settings, with the reason.
const NOT_SETTINGS: &[(&str, &str)] = &[
    (
        "AIHUMMER_FAILPOINT",
        "test-only fault injection for the e2e suites",
    ),
    (
        "AIHUMMER_PUBLISH_KEY_PASSWORD",
        "read by aihummer-publish on a release machine, not by a node; documented with publishing",
    ),
    (
        "AIHUMMER_UPDATE_",
        "the prefix that marks every update setting supervisor-only, not a variable itself",
    ),
];

/// Named in the docs but not read at run time, with the reason.
const BUILD_TIME: &[(&str, &str)] = &[(
    "AIHUMMER_BUILD_VERSION",
    "read by the build scripts (packaging/version_stamp.rs) when compiling",
)];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// `AIHUMMER_*` names in `text`, each taken whole.
fn names(text: &str) -> BTreeSet<String> {
    text.match_indices("AIHUMMER_")
        .map(|(at, _)| name_at(&text[at..]))
        .collect()
}

/// The name `text` starts with.
fn name_at(text: &str) -> String {
    let end = text
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    text[..end].to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Variables the code reads at run time: `"AIHUMMER_...` literals before a file's
/// `#[cfg(test)]` module. `env!("AIHUMMER_...")` are compile-time values the build scripts
/// set (the version and target triple), not settings.
fn read_by_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["common/src", "gateway/src", "supervisor/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut found = BTreeSet::new();
    for file in files {
        let text = read(&file);
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (at, _) in code.match_indices("\"AIHUMMER_") {
            if !code[..at].ends_with("env!(") {
                found.insert(name_at(&code[at + 1..]));
            }
        }
    }
    found
}

/// Variables named in the first cell of the README's tables.
fn in_readme_tables() -> BTreeSet<String> {
    read(&root().join("README.md"))
        .lines()
        .filter_map(|line| line.strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .flat_map(names)
        .collect()
}

fn in_env_example() -> BTreeSet<String> {
    names(&read(&root().join("packaging/aihummer.env.example")))
}

fn excluded(list: &[(&str, &str)]) -> BTreeSet<String> {
    list.iter().map(|(name, _)| name.to_string()).collect()
}

#[test]
fn every_variable_the_code_reads_is_in_the_env_example_and_the_readme_tables() {
    let settings: BTreeSet<_> = read_by_code()
        .difference(&excluded(NOT_SETTINGS))
        .cloned()
        .collect();
    assert!(
        settings.contains("AIHUMMER_DATABASE_URL") && settings.contains("AIHUMMER_AUTO_UPDATE"),
        "the scan finds the settings: {settings:?}"
    );
    let example = in_env_example();
    let tables = in_readme_tables();
    let missing_example: Vec<_> = settings.difference(&example).collect();
    let missing_tables: Vec<_> = settings.difference(&tables).collect();
    assert!(
        missing_example.is_empty() && missing_tables.is_empty(),
        "read by the code but not documented: in packaging/aihummer.env.example \
         {missing_example:?}, in README's tables {missing_tables:?}"
    );
}

#[test]
fn every_documented_variable_is_read_by_the_code() {
    let code = read_by_code();
    for (doc, documented) in [
        ("packaging/aihummer.env.example", in_env_example()),
        ("README's tables", in_readme_tables()),
    ] {
        let stale: Vec<_> = documented
            .difference(&code)
            .filter(|name| !excluded(BUILD_TIME).contains(*name))
            .collect();
        assert!(
            stale.is_empty(),
            "{doc} documents variables nothing reads: {stale:?}"
        );
    }
    let readme = read(&root().join("README.md"));
    for (name, why) in NOT_SETTINGS.iter().chain(BUILD_TIME) {
        if !matches!(*name, "AIHUMMER_FAILPOINT" | "AIHUMMER_UPDATE_") {
            assert!(readme.contains(name), "README never names {name} ({why})");
        }
    }
}

#[test]
fn the_readme_keygen_command_works_as_written_and_prints_the_pubkey_line_it_shows() {
    let readme = read(&root().join("README.md"));
    let line = readme
        .lines()
        .find(|l| l.contains("aihummer-publish keygen"))
        .expect("README shows keygen");
    let command = line.split('#').next().unwrap_or_default().trim();
    let dir = tempfile::tempdir().expect("tempdir");
    let publish = aihummer_tests::binary("aihummer-publish");
    // The README writes `VAR=... aihummer-publish keygen ...`; run exactly its words, with
    // the binary's full path and a real password for the `...`.
    let mut words = command.split_whitespace();
    let mut cmd = std::process::Command::new(&publish);
    cmd.current_dir(dir.path())
        .env_remove("AIHUMMER_PUBLISH_KEY_PASSWORD");
    for word in words.by_ref() {
        match word.split_once('=') {
            Some((var, _)) if var.starts_with("AIHUMMER_") => {
                cmd.env(var, "correct horse battery staple");
            }
            _ if word == "aihummer-publish" => break,
            _ => panic!("unexpected word {word:?} in {command:?}"),
        }
    }
    let out = cmd.args(words).output().expect("run aihummer-publish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = stdout
        .lines()
        .find(|l| l.starts_with("AIHUMMER_UPDATE_PUBKEY="))
        .expect("keygen prints the setting line");
    assert!(
        readme.contains("AIHUMMER_UPDATE_PUBKEY=RW"),
        "README shows the AIHUMMER_UPDATE_PUBKEY= line keygen prints ({pubkey})"
    );
}
