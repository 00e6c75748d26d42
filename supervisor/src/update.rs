//! Where an update check enters the supervisor.
//!
//! SIGHUP (and later the update timer and `aihummer update`) asks for a check. Requests
//! are merged: while a handoff runs, any number of them leave one check to run afterwards,
//! and a request while a check is already pending adds nothing. The check itself arrives
//! with the self-update work; until then it reports that no update source is configured.

/// Why no update could be checked for.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// This build has no update pipeline yet.
    #[error("no update source is configured yet; updates are not available in this build")]
    NoSource,
}

/// What to do with a request for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing else runs: check now.
    CheckNow,
    /// A handoff runs: the check waits for it to end.
    Deferred,
    /// A check is already waiting; this request joins it.
    Merged,
}

/// Pending check requests, merged.
#[derive(Debug, Default)]
pub struct Requests {
    pending: bool,
}

impl Requests {
    /// Records a request; `busy` is whether a handoff or a start is under way.
    pub fn request(&mut self, busy: bool) -> Action {
        if self.pending {
            Action::Merged
        } else if busy {
            self.pending = true;
            Action::Deferred
        } else {
            Action::CheckNow
        }
    }

    /// Takes the deferred request, if any, once the supervisor is idle again.
    pub fn take_pending(&mut self) -> bool {
        std::mem::take(&mut self.pending)
    }
}

/// Checks for an update. Always [`UpdateError::NoSource`] until the update pipeline exists.
pub fn check() -> Result<(), UpdateError> {
    Err(UpdateError::NoSource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_during_a_handoff_merge_into_one_check_afterwards() {
        let mut r = Requests::default();
        assert_eq!(r.request(true), Action::Deferred);
        assert_eq!(r.request(true), Action::Merged);
        assert_eq!(r.request(false), Action::Merged);
        assert!(r.take_pending());
        assert!(!r.take_pending());
        assert_eq!(r.request(false), Action::CheckNow);
    }
}
