//! The log as an operator's journal sees it: `deepgate run` with stderr in a file that `JOURNAL_STREAM` names
//! (as systemd sets it) prefixes every line with its syslog priority, starts with the line naming version,
//! commit, board and model checksums, and says a repeated error once, with the count of its repeats.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `deepgate run --board BOARD` with stderr into a file (named by `JOURNAL_STREAM` when `journal`), and
/// returns what it wrote there.
fn run_logged(board: &Path, journal: bool) -> String {
    let directory = common::temp_dir("logs");
    let path = directory.join("stderr");
    let stderr = std::fs::File::create(&path).unwrap();
    let metadata = stderr.metadata().unwrap();
    let mut command = Command::new(common::exe());
    command
        .args(["run", "--board"])
        .arg(board)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(stderr);
    if journal {
        command.env("JOURNAL_STREAM", format!("{}:{}", metadata.dev(), metadata.ino()));
    }
    let status = command.status().expect("deepgate runs");
    assert_eq!(status.code(), Some(1), "the missing inputs fail the run");
    std::fs::read_to_string(&path).unwrap()
}

/// A board replaying one photo, then the same missing file three times (the same error three times).
fn board_with_a_repeated_error() -> (std::path::PathBuf, String) {
    let missing = common::temp_dir("missing").join("gone.png");
    let photo = common::fixture("faces/obama.jpg");
    let board = common::board(None, &[&photo, &missing, &missing, &missing], &[]);
    (board, missing.display().to_string())
}

#[test]
fn in_the_journal_every_line_carries_its_priority_and_a_repeated_error_is_said_once_with_its_count() {
    let (board, missing) = board_with_a_repeated_error();
    let log = run_logged(&board, true);
    for line in log.lines() {
        let priority = line.strip_prefix('<').and_then(|rest| rest.split_once('>')).map(|(digit, _)| digit);
        assert!(matches!(priority, Some("3" | "4" | "6" | "7")), "line without a priority: {line:?}\n{log}");
    }
    let startup: Vec<&str> = log.lines().filter(|line| line.contains(" (commit ")).collect();
    assert_eq!(startup.len(), 1, "one start-up line:\n{log}");
    let expected = format!("<6>deepgate::supervisor: deepgate {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(startup[0].starts_with(&expected), "{}", startup[0]);
    assert!(startup[0].contains("board `host`"), "{}", startup[0]);
    assert!(startup[0].matches(" sha256 ").count() == 2, "both models' checksums: {}", startup[0]);
    let errors: Vec<&str> = log.lines().filter(|line| line.contains(&missing)).collect();
    assert_eq!(errors.len(), 2, "the error once, then its count at the end:\n{log}");
    assert!(errors[0].starts_with("<3>"), "{}", errors[0]);
    assert!(errors[1].starts_with("<4>") && errors[1].ends_with("(2 more like it since it was last logged)"));
}

#[test]
fn outside_the_journal_lines_carry_a_timestamp_and_no_priority_prefix() {
    let (board, _) = board_with_a_repeated_error();
    let log = run_logged(&board, false);
    assert!(log.lines().any(|line| line.contains(" (commit ")), "{log}");
    for line in log.lines() {
        assert!(line.starts_with('[') && !line.starts_with('<'), "{line:?}");
    }
}
