//! Who may use the control socket. Every connection's peer is described by [`Peer`]
//! (SO_PEERCRED's uid, gid and pid, the pid's supplementary groups and process group) and
//! judged by [`Access::check`] before a byte of it is read:
//!
//! - a process in a gateway's process group is refused, whatever its uid: it is the
//!   gateway or something it started (the only way to tell the gateway apart when it runs
//!   as the supervisor's own user);
//! - the gateway's uid is refused when it is not the supervisor's own;
//! - root, the supervisor's own uid and members of `AIHUMMER_ADMIN_GROUP` (as primary or
//!   supplementary group) are let in; everyone else is refused.
//!
//! The groups and process group are read through the peer's pid, after SO_PEERCRED: a
//! peer that could not be looked up (gone, or in another pid namespace) is refused.

use crate::process::groups::GatewayGroups;

/// What is known about the process at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its pid.
    pub pid: i32,
    /// Its supplementary groups (`Groups:` in `/proc/<pid>/status`).
    pub groups: Vec<u32>,
    /// Its process group.
    pub pgid: i32,
}

/// Why a peer was not described.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// SO_PEERCRED failed.
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(std::io::Error),
    /// The kernel gave no pid (a peer in another pid namespace).
    #[error("the peer's pid is unknown")]
    NoPid,
    /// The peer's process group could not be read.
    #[error("cannot read the process group of pid {pid}: {source}")]
    ProcessGroup {
        /// The peer's pid.
        pid: i32,
        /// Why.
        source: nix::Error,
    },
}

impl Peer {
    /// Describes the process at the other end of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Result<Peer, PeerError> {
        let cred = stream.peer_cred().map_err(PeerError::Credentials)?;
        // A pid of 0 or none means the peer lives in another pid namespace; looking up pid 0
        // would describe this very process.
        let pid = cred.pid().filter(|&pid| pid > 0).ok_or(PeerError::NoPid)?;
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .map_err(|source| PeerError::ProcessGroup { pid, source })?
            .as_raw();
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|status| status_groups(&status))
            .unwrap_or_default();
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
            pgid,
        })
    }
}

/// The `Groups:` line of a `/proc/<pid>/status` text.
fn status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Who may use the socket.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The supervisor's uid.
    pub uid: u32,
    /// The uid gateways run as.
    pub gateway_uid: u32,
    /// The gid of `AIHUMMER_ADMIN_GROUP`, when it exists.
    pub admin_gid: Option<u32>,
    /// The process groups of the gateways.
    pub gateways: GatewayGroups,
}

impl Access {
    /// Whether `peer` may send requests; the error is the refusal to send it.
    pub fn check(&self, peer: &Peer) -> Result<(), String> {
        if self.gateways.contains(peer.pgid) {
            return Err(format!(
                "permission denied: pid {} (uid {}) runs in the gateway's process group {}; a gateway may not control its supervisor",
                peer.pid, peer.uid, peer.pgid
            ));
        }
        if peer.uid == self.gateway_uid && self.gateway_uid != self.uid {
            return Err(format!(
                "permission denied: uid {} is the gateway's user (AIHUMMER_GATEWAY_USER); a gateway may not control its supervisor",
                peer.uid
            ));
        }
        let admin = self
            .admin_gid
            .is_some_and(|gid| peer.gid == gid || peer.groups.contains(&gid));
        if peer.uid == 0 || peer.uid == self.uid || admin {
            return Ok(());
        }
        let group = match self.admin_gid {
            Some(gid) => format!(" and members of group {gid} (AIHUMMER_ADMIN_GROUP)"),
            None => String::new(),
        };
        Err(format!(
            "permission denied: uid {} may not control this supervisor (only root, uid {}{group} may)",
            peer.uid, self.uid
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;
    use crate::config::current_uid;

    fn peer(uid: u32, gid: u32, groups: &[u32], pgid: i32) -> Peer {
        Peer {
            uid,
            gid,
            pid: 4321,
            groups: groups.to_vec(),
            pgid,
        }
    }

    #[test]
    fn root_the_own_uid_and_admin_group_members_are_let_in_and_no_one_else() {
        let access = Access {
            uid: 0,
            gateway_uid: 998,
            admin_gid: Some(50),
            gateways: GatewayGroups::default(),
        };
        assert!(access.check(&peer(0, 0, &[0], 7)).is_ok());
        assert!(access.check(&peer(1000, 1000, &[1000, 50], 7)).is_ok());
        assert!(access.check(&peer(1001, 50, &[], 7)).is_ok());
        let refusal = access.check(&peer(1002, 1002, &[1002], 7)).unwrap_err();
        assert_eq!(
            refusal,
            "permission denied: uid 1002 may not control this supervisor (only root, uid 0 and members of group 50 (AIHUMMER_ADMIN_GROUP) may)"
        );
    }

    #[test]
    fn the_gateway_s_user_is_refused_even_in_the_admin_group() {
        let access = Access {
            uid: 0,
            gateway_uid: 998,
            admin_gid: Some(50),
            gateways: GatewayGroups::default(),
        };
        let refusal = access.check(&peer(998, 998, &[998, 50], 7)).unwrap_err();
        assert!(refusal.contains("is the gateway's user"), "{refusal}");
    }

    #[test]
    fn a_process_in_a_gateway_s_group_is_refused_even_as_the_supervisor_s_own_user() {
        let mut gateway = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(gateway.id()).unwrap();
        let access = Access {
            uid: 1000,
            gateway_uid: 1000,
            admin_gid: None,
            gateways: GatewayGroups::default(),
        };
        access.gateways.add(pgid);
        let refusal = access.check(&peer(1000, 1000, &[], pgid)).unwrap_err();
        assert!(refusal.contains("gateway's process group"), "{refusal}");
        assert!(access.check(&peer(1000, 1000, &[], pgid + 1)).is_ok());
        gateway.kill().unwrap();
        gateway.wait().unwrap();
    }

    #[tokio::test]
    async fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let me = Peer::of(&a).unwrap();
        assert_eq!(me.uid, current_uid());
        assert_eq!(me.pid, i32::try_from(std::process::id()).unwrap());
        assert_eq!(me.pgid, nix::unistd::getpgrp().as_raw());
        let groups: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(me.groups, groups);
    }

    #[test]
    fn the_groups_line_of_proc_status_is_read() {
        let status = "Name:\tx\nGid:\t5\t5\t5\t5\nGroups:\t4 24 27 \nNSpid:\t1\n";
        assert_eq!(status_groups(status), [4, 24, 27]);
        assert!(status_groups("Groups:\n").is_empty());
    }
}
