//! The release channels (`AIHUMMER_UPDATE_CHANNEL`): their names in URLs and manifests,
//! and which carry prereleases.

use std::fmt;
use std::str::FromStr;

/// A release channel (`AIHUMMER_UPDATE_CHANNEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Releases only.
    Stable,
    /// Release candidates and releases.
    Beta,
    /// Early previews and releases.
    Alfa,
    /// Every build and releases.
    Dev,
}

/// A channel name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AIHUMMER_UPDATE_CHANNEL={0:?} is not a channel; expected stable, beta, alfa or dev")]
pub struct UnknownChannel(pub String);

impl Channel {
    /// The name used in URLs and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Beta => "beta",
            Channel::Alfa => "alfa",
            Channel::Dev => "dev",
        }
    }

    /// Whether versions with a prerelease part (`1.5.0-rc.1`) may be installed from it.
    pub fn carries_prereleases(self) -> bool {
        !matches!(self, Channel::Stable)
    }
}

impl FromStr for Channel {
    type Err = UnknownChannel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "stable" => Ok(Channel::Stable),
            "beta" => Ok(Channel::Beta),
            "alfa" => Ok(Channel::Alfa),
            "dev" => Ok(Channel::Dev),
            other => Err(UnknownChannel(other.to_string())),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_and_unknown_ones_are_named() {
        assert_eq!("beta".parse::<Channel>(), Ok(Channel::Beta));
        assert_eq!(
            "nightly".parse::<Channel>().unwrap_err().to_string(),
            "AIHUMMER_UPDATE_CHANNEL=\"nightly\" is not a channel; expected stable, beta, alfa or dev"
        );
    }
}
