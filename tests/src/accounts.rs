//! Throwaway system users and groups for the privilege-separation suites, made with
//! `useradd`/`groupadd` (the suites run as root) under unique names, so tests running side
//! by side never share one, and removed again when dropped (also on panic). Commands run
//! as one of them through `setpriv`, with exactly that user's groups.

use std::process::Command;
use std::time::{Duration, Instant};

/// A system group that exists until dropped.
pub struct TestGroup {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl TestGroup {
    /// Creates a group named after `role` and a unique suffix.
    pub fn create(role: &str) -> TestGroup {
        let name = unique(role);
        shadow_tool("groupadd", &["--system", &name]);
        let gid = nix::unistd::Group::from_name(&name)
            .expect("look the group up")
            .expect("the group just made")
            .gid
            .as_raw();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// A system user (with a primary group of its own name) that exists until dropped.
pub struct TestUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TestUser {
    /// Creates a user named after `role` and a unique suffix, a member of `groups`.
    pub fn create(role: &str, groups: &[&TestGroup]) -> TestUser {
        let name = unique(role);
        let groups: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let mut args = vec![
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
        ];
        let groups = groups.join(",");
        if !groups.is_empty() {
            args.extend(["--groups", &groups]);
        }
        args.push(&name);
        shadow_tool("useradd", &args);
        let user = nix::unistd::User::from_name(&name)
            .expect("look the user up")
            .expect("the user just made");
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    /// `setpriv` arguments that run the rest of a command line as this user, with its gid
    /// and its supplementary groups.
    pub fn setpriv(&self) -> Vec<String> {
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--init-groups".into(),
            "--".into(),
        ]
    }

    /// Whether this user succeeds in running `sh -c script` (with `args` as `$1`...).
    pub fn succeeds(&self, script: &str, args: &[&str]) -> bool {
        Command::new("setpriv")
            .args(self.setpriv())
            .args(["sh", "-c", script, "sh"])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run setpriv")
            .success()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // userdel refuses while a process of the user runs: a gateway of a supervisor just
        // stopped may still be draining. It also removes the user's own group.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !Command::new("userdel")
            .arg(&self.name)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A name for `role` no other test uses: `aht` (AiHummer test), the role, 8 hex digits.
fn unique(role: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("aht{role}{}", &id[..8])
}

/// Runs a shadow-utils tool. Tests running side by side contend for the lock on
/// `/etc/passwd` and `/etc/group`, which the tools report as a failure: those are retried
/// until a deadline.
fn shadow_tool(tool: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("run {tool} (the suite must run as root): {err}"));
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("lock") && Instant::now() < deadline,
            "{tool} {args:?} failed: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
