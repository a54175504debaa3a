//! Commissioning against the real control panel: the install window, its end by KEYSET or by time, no re-arming
//! by a restart, the local reset, and the serial number the panel reads. Part of `tests/osdp.rs` (its helpers).

use super::*;
use deepgate::gate::osdp::{OsdpGate, OsdpSettings};

fn settings(pty: &str, key: &Path, window: Duration) -> OsdpSettings {
    OsdpSettings {
        device: PathBuf::from(pty),
        baud: 115_200,
        address: ADDRESS.parse().unwrap(),
        key: key.to_path_buf(),
        install_window: window,
        vendor_code: [0x0a, 0x1b, 0x2c],
        hold: Duration::from_millis(400),
        model: [0; 8],
        door: None,
    }
}

/// Starts a gate and a panel with `panel_arguments`, waits `delay` before the panel polls, and returns whether a
/// secure channel came up within `within`, with both still running.
fn session(
    python: &Path,
    directory: &Path,
    key: &Path,
    window: Duration,
    panel_arguments: &[&str],
    delay: Duration,
) -> (Panel, OsdpGate) {
    let panel = Panel::start(python, directory, panel_arguments);
    let gate = OsdpGate::start(&settings(&panel.pty.clone(), key, window)).unwrap();
    std::thread::sleep(delay);
    let mut panel = panel;
    panel.send("start");
    (panel, gate)
}

fn never_secure(panel: &mut Panel, what: &str) {
    let lines = panel.collect(Duration::from_secs(6));
    assert!(!lines.iter().any(|line| line["secure"] == true), "{what}: a secure channel came up: {lines:?}");
}

#[test]
fn install_mode_ends_with_its_window_or_keyset_and_only_a_local_reset_rearms_it() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(python) = panel_python() else { return };
    let directory = common::temp_dir("osdp-install-window");
    let key = directory.join("site.key");
    let window = Duration::from_secs(2);

    // The window passes before the panel polls: the default key is refused from then on.
    let (mut panel, gate) =
        session(&python, &directory, &key, window, &["--install"], Duration::from_secs(3));
    never_secure(&mut panel, "after the install window");
    drop(gate);
    panel.stop();

    // A restart does not open another window, though no site key was set.
    let (mut panel, gate) = session(&python, &directory, &key, window, &["--install"], Duration::ZERO);
    never_secure(&mut panel, "after a restart with the window spent");
    drop(gate);
    panel.stop();

    // The local reset re-arms it; the controller sees install mode as health, and KEYSET ends it.
    assert!(!deepgate::gate::osdp::reset_site_key(&key).unwrap(), "no key had been set");
    let long = Duration::from_secs(60);
    let (mut panel, gate) = session(&python, &directory, &key, long, &["--install"], Duration::ZERO);
    panel.wait_for("a secure channel on the default key", Duration::from_secs(30), |line| {
        line["secure"] == true
    });
    let start = panel.seen.len();
    panel.send("health");
    let health = panel.wait_from(start, "the health reply", Duration::from_secs(10), |line| is_mfg(line, 2));
    assert_eq!(health["data"], "0200000001", "install mode armed, shown as health: {health}");
    panel.send(&format!("keyset {KEY}"));
    let end = Instant::now() + Duration::from_secs(10);
    while !key.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(key.exists(), "the site key was not stored");
    // The panel moves to the new key itself; the PD's health reply no longer shows install mode.
    let start = panel.seen.len();
    panel.wait_from(start, "the secure channel on the new key", Duration::from_secs(30), |line| {
        line["secure"] == true
    });
    let start = panel.seen.len();
    panel.send("health");
    let health = panel.wait_from(start, "the health reply", Duration::from_secs(10), |line| is_mfg(line, 2));
    assert_eq!(health["data"], "0200000000", "install mode ended by KEYSET: {health}");
    drop(gate);
    panel.stop();

    // A restart after the site key was set: a panel with the install key can no longer connect; the site key can.
    let (mut panel, gate) = session(&python, &directory, &key, long, &["--install"], Duration::ZERO);
    never_secure(&mut panel, "the install key after commissioning");
    drop(gate);
    panel.stop();
    let (mut panel, gate) = session(&python, &directory, &key, long, &["--scbk", KEY], Duration::ZERO);
    panel.wait_for("the secure channel on the site key", Duration::from_secs(30), |line| {
        line["secure"] == true
    });
    drop(gate);
    panel.stop();

    // The reset command, as an operator runs it on the device: the key is gone and install mode armed again.
    let video = directory.join("astronaut.y4m");
    common::drifting_video(&video, "faces/astronaut.png", 64, 64, 2, 1);
    let gate_section = format!(
        "{{ kind = \"osdp\", device = \"/dev/null\", baud = 115200, address = {ADDRESS}, key = {key:?}, \
         install_window_s = 60, vendor_code = \"{VENDOR}\", hold_ms = 400 }}"
    );
    let board = common::board(None, &[&video], &[("gate", &gate_section)]);
    let output = Command::new(common::exe())
        .args(["osdp", "reset-key", "--board", board.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("REMOVED") && !key.exists(), "the reset is logged and removes the key: {stderr}");
    let (mut panel, gate) = session(&python, &directory, &key, long, &["--install"], Duration::ZERO);
    panel.wait_for("install mode re-armed", Duration::from_secs(30), |line| line["secure"] == true);
    drop(gate);
    panel.stop();
}

#[test]
fn the_panel_reads_a_serial_number_stable_across_restarts_and_unique_per_state_directory() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(python) = panel_python() else { return };
    let read = |directory: &Path| {
        let key = key_file(directory, KEY);
        let (mut panel, gate) =
            session(&python, directory, &key, Duration::ZERO, &["--scbk", KEY], Duration::ZERO);
        panel.wait_for("the secure channel", Duration::from_secs(30), |line| line["secure"] == true);
        panel.send("id");
        let id = panel.wait_for("the PD identity", Duration::from_secs(10), |line| line.get("id").is_some());
        drop(gate);
        panel.stop();
        // libosdp's Python binding gives the 32-bit serial number as a signed integer.
        id["id"]["serial_number"]
            .as_i64()
            .unwrap_or_else(|| panic!("no serial number in the PD identity {id}"))
    };
    let first = common::temp_dir("osdp-serial-1");
    let second = common::temp_dir("osdp-serial-2");
    let serial = read(&first);
    assert_ne!(serial, 0, "a serial number, not zeros");
    assert_eq!(read(&first), serial, "stable across restarts");
    assert_ne!(read(&second), serial, "each device (state directory) has its own");
}
