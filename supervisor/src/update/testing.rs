//! Generators shared by the update pipeline's property tests.

use proptest::prelude::*;
use semver::Version;

/// Versions with each part below `below` and, sometimes, a prerelease matching `pre`.
pub fn arb_version(below: u64, pre: &'static str) -> impl Strategy<Value = Version> {
    (0..below, 0..below, 0..below, proptest::option::of(pre)).prop_map(|(a, b, c, pre)| {
        let mut v = Version::new(a, b, c);
        if let Some(pre) = pre {
            v.pre = semver::Prerelease::new(&pre).unwrap();
        }
        v
    })
}
