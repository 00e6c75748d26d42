//! The process groups of this supervisor's gateways. Each gateway starts as the leader of
//! a group of its own (its pgid is its pid), and everything it forks stays in that group
//! unless it leaves on purpose. The control server asks [`GatewayGroups::contains`] about a
//! peer's pgid to refuse gateway processes when the gateway's uid alone cannot tell them
//! apart (a supervisor not running as root runs its gateway as itself).
//!
//! A group is remembered until no process is left in it, not just until its leader
//! exits: a gateway's forked helper outlives it in the same group. While a group has
//! members the kernel does not hand its id out as a new pid, so a remembered id always
//! names the gateway's own group. This is a guard against a gateway using the socket, not a
//! wall: a process that calls `setsid` leaves its group; the uid split of a root supervisor
//! is the boundary.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;

/// The process groups gateways were started in, shared by the spawner and the server.
#[derive(Debug, Clone, Default)]
pub struct GatewayGroups(Arc<Mutex<BTreeSet<i32>>>);

impl GatewayGroups {
    /// Remembers the group a gateway leads.
    pub fn add(&self, pgid: i32) {
        self.lock().insert(pgid);
    }

    /// Whether `pgid` is the group of a gateway this supervisor started that still has a
    /// live process. Forgets groups that have emptied.
    pub fn contains(&self, pgid: i32) -> bool {
        let mut groups = self.lock();
        // Signal 0 checks for existence only. EPERM (a member of another uid) still means
        // the group exists; only ESRCH says it is empty.
        groups.retain(|&group| killpg(Pid::from_raw(group), None) != Err(Errno::ESRCH));
        groups.contains(&pgid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        // The set holds plain integers, so a panic while it was held left it consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn a_group_is_remembered_while_it_has_members_and_forgotten_once_empty() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        let groups = GatewayGroups::default();
        groups.add(pgid);
        let own = nix::unistd::getpgrp().as_raw();
        assert!(groups.contains(pgid) && !groups.contains(own));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!groups.contains(pgid));
        assert!(groups.lock().is_empty(), "the emptied group is forgotten");
    }
}
