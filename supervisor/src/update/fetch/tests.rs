//! Unit tests of `fetch`.

use super::*;

#[test]
fn server_errors_and_timeouts_are_transient_and_refusals_are_not() {
    let status = |code| FetchError::Status {
        url: "https://cdn.example.com/x".into(),
        status: StatusCode::from_u16(code).unwrap(),
    };
    assert!(status(500).is_transient());
    assert!(status(429).is_transient());
    assert!(!status(404).is_transient());
    assert!(
        !FetchError::Oversized {
            url: String::new(),
            expected: 1
        }
        .is_transient()
    );
    assert!(
        FetchError::Truncated {
            url: String::new(),
            expected: 2,
            got: 1
        }
        .is_transient()
    );
}
