//! Unit tests of `cli`.

use super::*;
use crate::control::fixtures;
use crate::control::{Event, SupervisorState};

#[test]
fn the_human_status_names_the_gateway_and_the_last_error() {
    let mut report = fixtures::status();
    report.state = SupervisorState::HandingOff;
    if let Some(active) = &mut report.active {
        active.health_only = true;
    }
    report.last_error = Some(Event {
        at: "t2".into(),
        message: "the new gateway (pid 2) exited with exit code 1".into(),
    });
    let text = render_status(&report);
    assert!(
        text.contains("supervisor: 1.0.0 (pid 1), handing_off"),
        "{text}"
    );
    assert!(
        text.contains("active gateway: pid 2, version 1.0.0, ready (health-only)"),
        "{text}"
    );
    assert!(
        text.contains("last error: t2: the new gateway (pid 2) exited"),
        "{text}"
    );
}

/// A terminal that records what is drawn on it.
#[derive(Debug, Clone, Default)]
struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

impl Screen {
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn push(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().push_str(s);
        Ok(())
    }
}

impl indicatif::TermLike for Screen {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.push(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.push(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.push("<clear>")
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn step(stage: Stage, message: &str, bytes: Option<(u64, u64)>) -> Progress {
    Progress {
        stage,
        message: message.into(),
        pid: None,
        done: bytes.map(|b| b.0),
        total: bytes.map(|b| b.1),
    }
}

#[test]
fn the_download_bar_starts_at_a_sane_rate_and_gives_way_to_a_line_of_its_own() {
    let screen = Screen::default();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut view = ProgressView {
        quiet: false,
        prefix: "update",
        bar_target: Some(Box::new({
            let screen = screen.clone();
            move || indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()))
        })),
        say: Box::new({
            let lines = lines.clone();
            move |line| lines.lock().unwrap().push(line.to_string())
        }),
        bar: None,
    };
    // The first event already reports 8 MiB (a resumed or fast download).
    view.show(&step(Stage::Downloading, "", Some((8 << 20, 16 << 20))));
    let first = screen.text();
    assert!(first.contains("8.00 MiB/16.00 MiB"), "{first}");
    for absurd in ["GiB/s", "TiB/s", "PiB/s", "EiB/s"] {
        assert!(!first.contains(absurd), "first frame: {first}");
    }
    view.show(&step(Stage::Downloading, "", Some((16 << 20, 16 << 20))));
    view.show(&step(Stage::Staged, "1.4.5 verified", None));
    assert!(
        screen.text().ends_with("<clear>"),
        "the bar is cleared, not left without its newline: {:?}",
        screen.text()
    );
    assert_eq!(
        *lines.lock().unwrap(),
        [
            "update: downloaded 16.00 MiB of 16.00 MiB",
            "update: 1.4.5 verified"
        ]
    );
}

#[test]
fn only_a_missing_supervisor_has_its_own_exit_code() {
    let missing = ClientError::from(CallError::NoSupervisor {
        path: "/run/x.sock".into(),
        reason: "No such file or directory".into(),
    });
    assert_eq!(missing.exit_code(), EXIT_NO_SUPERVISOR);
    assert!(
        missing
            .to_string()
            .starts_with("no supervisor is running at /run/x.sock")
    );
    let failed = ClientError::from(CallError::Failed("x".into()));
    assert_eq!(failed.exit_code(), 1);
    assert_eq!(ClientError::UpdateRefused("x".into()).exit_code(), 1);
}
