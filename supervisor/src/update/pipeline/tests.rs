//! Unit tests of `pipeline`.

use super::*;
use reqwest::StatusCode;

#[test]
fn only_a_release_at_fault_is_quarantined_and_only_network_trouble_is_retried() {
    let v = Version::new(1, 1, 0);
    let url = "http://127.0.0.1/x".to_string();
    let smoke = UpdaterError::Stage(StageError::Install(InstallError::Smoke(
        SmokeError::WrongVersion {
            binary: PathBuf::from("/x"),
            expected: v.clone(),
            reported: "aihummer-gateway 1.0.0".into(),
        },
    )));
    assert!(smoke.blames_release() && !smoke.is_transient());
    let slow = UpdaterError::Stage(StageError::Install(InstallError::Smoke(
        SmokeError::Timeout {
            binary: PathBuf::from("/x"),
            after: Duration::from_secs(5),
        },
    )));
    assert!(
        !slow.blames_release(),
        "a slow --version is this host's trouble as likely as the release's"
    );
    let sha = UpdaterError::Stage(StageError::Sha256 {
        version: v.clone(),
        expected: "a".into(),
        actual: "b".into(),
    });
    assert!(sha.blames_release() && !sha.is_transient());
    let oversized = UpdaterError::Stage(StageError::Fetch {
        version: v.clone(),
        source: FetchError::Oversized {
            url: url.clone(),
            expected: 1,
        },
    });
    assert!(oversized.blames_release());
    let truncated = UpdaterError::Stage(StageError::Fetch {
        version: v,
        source: FetchError::Truncated {
            url: url.clone(),
            expected: 2,
            got: 1,
        },
    });
    assert!(
        !truncated.blames_release(),
        "a cut connection is not the release's fault"
    );
    let down = UpdaterError::Fetch(FetchError::Status {
        url,
        status: StatusCode::SERVICE_UNAVAILABLE,
    });
    assert!(down.is_transient() && !down.blames_release());
    assert!(!UpdaterError::NoSource.is_transient());
}
