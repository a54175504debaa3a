//! The site override as an integrator uses it: a file outside the bundle laid over the bundle's board config
//! (`DEEPGATE_SITE` or `--site`), strict like a board file, its relative paths its own; `deepgate config check`
//! prints the merged configuration and says by its exit status whether it is valid.

mod common;

use deepgate::config::BoardConfig;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `deepgate` in the source tree with `DEEPGATE_SITE` set to `site` (None: unset).
fn deepgate_with_site(site: Option<&Path>, arguments: &[&str]) -> Output {
    let mut command = Command::new(common::exe());
    command.args(arguments).current_dir(common::root()).env("RUST_LOG", "warn");
    match site {
        Some(path) => command.env("DEEPGATE_SITE", path),
        None => command.env_remove("DEEPGATE_SITE"),
    };
    command.output().expect("the deepgate binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `contents` as `site.toml` in a fresh directory and returns its path.
fn site_file(contents: &str) -> std::path::PathBuf {
    let path = common::temp_dir("site").join("site.toml");
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn a_site_override_changes_its_keys_and_keeps_the_rest() {
    let site = site_file("[decision]\nframe_threshold = 0.4\n[board]\nid = \"door-7\"\n");
    let site_text = site.display().to_string();
    let output =
        deepgate_with_site(None, &["config", "check", "--board", "board/host.toml", "--site", &site_text]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains(&format!("frame_threshold = 0.4  # {site_text}")), "{stdout}");
    assert!(stdout.contains(&format!("id = \"door-7\"  # {site_text}")), "{stdout}");
    assert!(stdout.contains("max_frames = 30\n"), "siblings of an overridden key are kept: {stdout}");
    assert!(stdout.contains("description = \"Development workstation"), "{stdout}");

    // The printed configuration is itself a valid board config, with the site's values in it.
    let printed = BoardConfig::parse(&stdout).expect("config check prints a valid board config");
    assert_eq!((printed.decision.frame_threshold, printed.board.id.as_str()), (0.4, "door-7"));

    // DEEPGATE_SITE gives the same file to every command; set but empty, there is no override.
    let by_environment = deepgate_with_site(Some(&site), &["config", "check"]);
    assert_eq!(text(&by_environment.stdout), stdout);
    let none = deepgate_with_site(Some(Path::new("")), &["config", "check"]);
    assert!(none.status.success(), "{}", text(&none.stderr));
    assert!(text(&none.stdout).contains("# site override: none"));
    assert!(text(&none.stdout).contains("frame_threshold = 0.5\n"));
}

#[test]
fn the_site_file_is_as_strict_as_a_board_file_and_errors_name_it_and_the_key() {
    let cases = [
        ("[decision]\nframe_treshold = 0.4\n", "frame_treshold"),
        ("[decision]\nframe_threshold = \"high\"\n", "decision.frame_threshold"),
        ("[decision]\nframe_threshold = 2.0\n", "decision.frame_threshold"),
        ("[desicion]\nframe_threshold = 0.4\n", "desicion"),
        ("inherit = \"host.toml\"\n", "inherit"),
        ("[gate]\nkind = \"tcp\"\n", "address"),
        ("[models]\nmanifest = 7\n", "models.manifest"),
        ("[decision\n", "parsing"),
    ];
    for (contents, key) in cases {
        let site = site_file(contents);
        let output = deepgate_with_site(Some(&site), &["config", "check"]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{contents}: {stderr}");
        assert!(stderr.contains(&site.display().to_string()), "{contents}: the file is not named: {stderr}");
        assert!(stderr.contains(key), "{contents}: `{key}` is not named: {stderr}");
        assert!(output.stdout.is_empty(), "nothing is printed for an invalid configuration");
    }
}

#[test]
fn a_named_site_file_must_exist_and_a_broken_board_is_named_as_such() {
    let missing = common::temp_dir("site").join("absent.toml");
    let by_option = deepgate_with_site(None, &["config", "check", "--site", &missing.display().to_string()]);
    let by_environment = deepgate_with_site(Some(&missing), &["config", "check"]);
    for output in [by_option, by_environment] {
        assert_eq!(output.status.code(), Some(2));
        assert!(text(&output.stderr).contains(&missing.display().to_string()), "{}", text(&output.stderr));
    }

    let board = common::temp_dir("board").join("door.toml");
    let mut misspelt = common::BoardVariant::load(&common::root().join("board/host.toml"));
    misspelt.remove("decision.max_frames").set("decision.max_frame", "30");
    misspelt.write(&board);
    let site = site_file("[decision]\nframe_threshold = 0.4\n");
    let output =
        deepgate_with_site(Some(&site), &["config", "check", "--board", &board.display().to_string()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("board config {}", board.display())) && stderr.contains("max_frame"),
        "{stderr}"
    );
}

#[test]
fn relative_paths_in_the_site_file_are_relative_to_the_site_file() {
    // The site replays its own photo, named relative to the site file, through `deepgate run`, the bundle's
    // board otherwise unchanged (its models still found relative to the board file).
    let site = site_file("[source]\npaths = [\"captures\"]\n[audit]\npath = \"log/audit.jsonl\"\n");
    let directory = site.parent().unwrap();
    std::fs::create_dir_all(directory.join("captures")).unwrap();
    std::fs::create_dir_all(directory.join("log")).unwrap();
    std::fs::copy(common::fixture("faces/obama.jpg"), directory.join("captures/obama.jpg")).unwrap();

    let check = deepgate_with_site(Some(&site), &["config", "check"]);
    let stdout = text(&check.stdout);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let absolute = std::path::absolute(directory).unwrap();
    assert!(stdout.contains(&format!("paths = [{:?}]", absolute.join("captures"))), "{stdout}");
    assert!(
        stdout.contains("manifest = \"../models/manifest.toml\"\n"),
        "the board's paths stay its own: {stdout}"
    );

    let run = deepgate_with_site(Some(&site), &["run", "--board", "board/host.toml"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let verdicts: Vec<serde_json::Value> = text(&run.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["type"] == "verdict")
        .collect();
    assert_eq!(verdicts.len(), 1, "one verdict, for the site's one photo: {verdicts:?}");
    let source = verdicts[0]["source"].as_str().unwrap();
    assert!(source.ends_with("captures/obama.jpg"), "{source}");
    assert!(directory.join("log/audit.jsonl").is_file(), "the audit log lands beside the site file");
}

#[test]
fn sighup_stops_the_run_cleanly_for_systemd_to_restart_it() {
    // A site that repeats its replay forever, as a kiosk's camera would run: only a signal ends it.
    let site = site_file("[source]\nrepeat = true\nframe_rate = 20.0\n");
    let mut child = Command::new(common::exe())
        .args(["run", "--board", "board/host.toml"])
        .current_dir(common::root())
        .env("RUST_LOG", "info")
        .env("DEEPGATE_SITE", &site)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("deepgate run starts");
    let mut stderr_pipe = child.stderr.take().unwrap();
    let logger = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut text).unwrap();
        text
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let sent = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("deepgate run did not stop within 20 s of SIGHUP");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = logger.join().unwrap();
    assert!(status.success(), "SIGHUP is a clean stop (status 0), got {status}: {stderr}");
    assert!(stderr.contains("site override") && stderr.contains("applied"), "{stderr}");
    assert!(stderr.contains("stopping on signal"), "{stderr}");
}
