//! Who a gateway runs as: the nginx master/worker split. A supervisor running as root
//! starts each gateway as `AIHUMMER_GATEWAY_USER`, with that user's gid and exactly that
//! user's supplementary groups, so the internet-facing process holds none of root's
//! powers; a supervisor running as anyone else runs the gateway as itself.
//!
//! The user and its groups are looked up here, once, before any fork: the user database
//! (NSS) allocates and may take locks, which is unsound between fork and exec. The child
//! then only makes the three async-signal-safe calls `setgroups`, `setgid`, `setuid`, in
//! that order (after `setuid` it could no longer change its groups). This `pre_exec` and
//! the descriptor code in [`super::fds`] are the crate's only `unsafe`.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist, setgid, setgroups, setuid};
use tokio::process::Command;

/// The variable naming the gateway's user.
pub const GATEWAY_USER_VAR: &str = "AIHUMMER_GATEWAY_USER";
/// The variable naming the group allowed on the control socket.
pub const ADMIN_GROUP_VAR: &str = "AIHUMMER_ADMIN_GROUP";

/// A user or group that cannot be used, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `AIHUMMER_GATEWAY_USER` names no user.
    #[error(
        "AIHUMMER_GATEWAY_USER={0}: no such user; create it (useradd --system --no-create-home --shell /usr/sbin/nologin {0}) or name another"
    )]
    NoSuchUser(String),
    /// Looking a user or group up failed.
    #[error("{var}={name}: cannot look it up: {source}")]
    Lookup {
        /// The variable.
        var: &'static str,
        /// Its value.
        name: String,
        /// Why.
        source: nix::Error,
    },
    /// The install dir would let the gateway replace the binaries it runs.
    #[error(
        "AIHUMMER_STATE_DIR: {path} is writable by the gateway's user {user} (owner uid {owner}, mode {mode:o}); make it root's and not writable by others: chown -R root:root and chmod -R go-w"
    )]
    WritableStateDir {
        /// The directory.
        path: PathBuf,
        /// The gateway's user.
        user: String,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The install dir could not be inspected.
    #[error("AIHUMMER_STATE_DIR: cannot inspect {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A user name with a NUL byte in it.
    #[error("{var}={name:?} is not a valid name")]
    BadName {
        /// The variable.
        var: &'static str,
        /// Its value.
        name: String,
    },
}

/// The identity a root supervisor switches a gateway to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its supplementary groups from the group database (the primary one included).
    pub groups: Vec<u32>,
    /// Its home directory, the gateway's `HOME`.
    pub home: PathBuf,
}

impl RunAs {
    /// Looks up `name` with its groups. A missing user is an error naming
    /// `AIHUMMER_GATEWAY_USER`.
    pub fn lookup(name: &str) -> Result<RunAs, IdentityError> {
        let lookup = |source| IdentityError::Lookup {
            var: GATEWAY_USER_VAR,
            name: name.to_string(),
            source,
        };
        let user = User::from_name(name)
            .map_err(lookup)?
            .ok_or_else(|| IdentityError::NoSuchUser(name.to_string()))?;
        let c_name = CString::new(name).map_err(|_| IdentityError::BadName {
            var: GATEWAY_USER_VAR,
            name: name.to_string(),
        })?;
        let mut groups: Vec<u32> = getgrouplist(&c_name, user.gid)
            .map_err(lookup)?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        Ok(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
        })
    }

    /// Makes `command` start as this identity: `HOME`, `USER` and `LOGNAME` name the user,
    /// and the child drops to its groups, gid and uid just before exec.
    pub fn apply(&self, command: &mut Command) {
        command
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        let groups: Vec<Gid> = self.groups.iter().copied().map(Gid::from_raw).collect();
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are sound. It allocates nothing (the group list was
        // built before the fork and is only borrowed) and makes three plain system calls;
        // nix's wrappers only convert their arguments and the errno. The order matters:
        // groups and gid need CAP_SETGID, which `setuid` to a non-root user drops.
        unsafe {
            command.pre_exec(move || {
                setgroups(&groups)?;
                setgid(gid)?;
                setuid(uid)?;
                Ok(())
            });
        }
    }
}

/// Refuses an install dir whose root or `versions/` the gateway running as `run_as` could
/// write to: it could then replace the binary the supervisor starts next (as an install
/// dir made by an older, non-root unit would allow). What does not exist yet is fine: a
/// root supervisor creates it root's own.
pub fn check_state_dir(state_dir: &Path, run_as: &RunAs) -> Result<(), IdentityError> {
    for dir in [state_dir.to_path_buf(), state_dir.join("versions")] {
        let meta = match std::fs::metadata(&dir) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(IdentityError::StateDir { path: dir, source }),
        };
        let mode = meta.mode() & 0o7777;
        let writable = meta.uid() == run_as.uid
            || (mode & 0o020 != 0 && run_as.groups.contains(&meta.gid()))
            || mode & 0o002 != 0;
        if writable && run_as.uid != 0 {
            return Err(IdentityError::WritableStateDir {
                path: dir,
                user: run_as.name.clone(),
                owner: meta.uid(),
                mode,
            });
        }
    }
    Ok(())
}

/// Who gateways run as, and who else shares the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// The identity a root supervisor switches gateways to; `None`: they run as the
    /// supervisor's own user.
    pub run_as: Option<RunAs>,
    /// The gid of `AIHUMMER_ADMIN_GROUP`, when that group exists.
    pub admin_gid: Option<u32>,
}

impl Identities {
    /// Resolves the settings for a supervisor running as `euid`: as root, the gateway user
    /// must exist; as anyone else the gateway runs as that user and `gateway_user` is
    /// not used. A missing admin group only means no group is let in.
    pub fn resolve(
        gateway_user: &str,
        admin_group: &str,
        euid: u32,
    ) -> Result<Identities, IdentityError> {
        let run_as = match euid {
            0 => Some(RunAs::lookup(gateway_user)?),
            _ => None,
        };
        let admin_gid = Group::from_name(admin_group)
            .map_err(|source| IdentityError::Lookup {
                var: ADMIN_GROUP_VAR,
                name: admin_group.to_string(),
                source,
            })?
            .map(|group| group.gid.as_raw());
        Ok(Identities { run_as, admin_gid })
    }

    /// The uid gateways run as, for a supervisor running as `euid`.
    pub fn gateway_uid(&self, euid: u32) -> u32 {
        self.run_as.as_ref().map_or(euid, |run_as| run_as.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_gateway_user_is_an_error_naming_the_variable() {
        let err = RunAs::lookup("aihummer-no-such-user-x9").unwrap_err();
        assert!(matches!(err, IdentityError::NoSuchUser(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("AIHUMMER_GATEWAY_USER=aihummer-no-such-user-x9: no such user"),
            "{message}"
        );
        let err = Identities::resolve("aihummer-no-such-user-x9", "x", 0).unwrap_err();
        assert!(err.to_string().contains("AIHUMMER_GATEWAY_USER"), "{err}");
    }

    #[test]
    fn an_install_dir_the_gateway_could_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let owner = std::fs::metadata(dir.path()).unwrap();
        let gateway = RunAs {
            name: "gw".into(),
            uid: owner.uid() + 1,
            gid: 54321,
            groups: vec![54321],
            home: PathBuf::from("/"),
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_state_dir(dir.path(), &gateway).unwrap();
        check_state_dir(&dir.path().join("not-yet"), &gateway).unwrap();
        let versions = dir.path().join("versions");
        std::fs::create_dir(&versions).unwrap();
        std::fs::set_permissions(&versions, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_state_dir(dir.path(), &gateway).unwrap_err();
        assert!(
            err.to_string()
                .contains("versions is writable by the gateway's user gw"),
            "{err}"
        );
        std::fs::set_permissions(&versions, std::fs::Permissions::from_mode(0o775)).unwrap();
        let member = RunAs {
            groups: vec![54321, owner.gid()],
            ..gateway.clone()
        };
        check_state_dir(dir.path(), &gateway).unwrap();
        assert!(check_state_dir(dir.path(), &member).is_err());
        let owner_itself = RunAs {
            uid: owner.uid(),
            ..gateway
        };
        if owner_itself.uid != 0 {
            assert!(check_state_dir(dir.path(), &owner_itself).is_err());
        }
    }

    #[test]
    fn root_is_found_with_its_own_groups_and_home() {
        let root = RunAs::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0), "{:?}", root.groups);
        assert_eq!(root.home, PathBuf::from("/root"));
    }

    #[test]
    fn only_a_root_supervisor_switches_users_and_a_missing_admin_group_lets_none_in() {
        let me = Identities::resolve("aihummer-no-such-user-x9", "no-such-group-x9", 1000).unwrap();
        assert_eq!(me, Identities::default());
        assert_eq!(me.gateway_uid(1000), 1000);
        let root = Identities::resolve("root", "root", 0).unwrap();
        assert_eq!(root.admin_gid, Some(0));
        assert_eq!(root.gateway_uid(0), 0);
    }
}
