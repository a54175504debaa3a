//! `cargo xtask systemd-test`: the shipped unit (board/deepgate@.service, unchanged) under a real systemd as
//! PID 1. Debian's kernel (vm-test's, from its cache) boots under qemu (TCG) into a minimal Debian bookworm root
//! made by debootstrap, packed whole into the initramfs (`rdinit=/sbin/init`: Debian's kernel has ext4 and
//! virtio-blk as modules, an initramfs root needs neither). In the guest the unit is enabled for a board whose
//! camera is a YUV4MPEG2 stream on a named pipe, written by a feeder service, so that the camera can stall for
//! real: the writer keeps the pipe open and sends nothing, the runtime's frame loop blocks in its read while
//! the process lives. A check script (a service of its own) then proves, with `systemctl show` and the
//! journal, that the unit stays `activating` until READY=1, runs while frames flow (through more than one
//! watchdog period), is killed by systemd's watchdog when the camera stalls, is restarted, and reaches READY
//! again. ARCHITECTURE.md, "Tests with real drivers"; README, "systemd".

use crate::vm::cpio::Archive;
use crate::vm::initramfs::STATUS_MARKER;
use crate::vm::{self, debian, Arch};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's Debian: suite, mirror and the packages beyond debootstrap's minbase. The cached root is named
/// after these (and after `ROOT_RECIPE`), so changing any of them makes a new one.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &[&str] = &["systemd", "systemd-sysv"];
/// Bumped when `make_root` changes what it does to the debootstrapped tree.
const ROOT_RECIPE: u32 = 1;

/// The unit's instance: `deepgate@vm.service` runs `--board /opt/deepgate/board/vm.toml`.
const INSTANCE: &str = "vm";
/// The named pipe the board's replay source reads (made by systemd-tmpfiles at boot).
const CAMERA_PIPE: &str = "/run/deepgate-camera/camera.y4m";
/// The camera's frames: small, 4:2:0, limited range (what the replay source expects of a Y4M stream).
const FRAME_WIDTH: usize = 320;
const FRAME_HEIGHT: usize = 240;

struct Options {
    timeout: Duration,
    /// Only make the cached Debian root (a set-up step can warm it).
    prepare_only: bool,
}

fn parse_options(arguments: &[String]) -> Result<Options> {
    let mut options = Options { timeout: Duration::from_secs(600), prepare_only: false };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--timeout" => {
                let seconds = arguments.next().and_then(|value| value.parse().ok());
                options.timeout = Duration::from_secs(seconds.context("--timeout takes seconds")?);
            }
            "--prepare-only" => options.prepare_only = true,
            other => bail!("systemd-test: unknown argument {other}\n{}", crate::HELP),
        }
    }
    Ok(options)
}

pub fn systemd_test(arguments: &[String]) -> Result<()> {
    let options = parse_options(arguments)?;
    let arch = Arch::X86_64;
    if arch != Arch::host() {
        bail!("systemd-test boots an x86_64 guest and runs on an x86_64 host only");
    }
    let (qemu, package) = arch.qemu();
    if Command::new(qemu).arg("--version").output().is_err() {
        bail!("{qemu} is missing: apt-get install --no-install-recommends {package}");
    }
    let cache = vm::target_directory().join("vm-cache");
    let prepare = Instant::now();
    let packages = debian::resolve(arch)?;
    let kernel = debian::kernel(arch, &packages, &cache)?;
    let root = root_archive(&cache.join("systemd"))?;
    eprintln!(
        "systemd-test: kernel {}, Debian {SUITE} root with systemd ({} MiB packed), ready in {:.1} s",
        kernel.release,
        std::fs::metadata(&root)?.len() >> 20,
        prepare.elapsed().as_secs_f64()
    );
    if options.prepare_only {
        return Ok(());
    }
    let (deepgate, _) = vm::build(arch)?;
    let work = cache.join("systemd").join("run");
    std::fs::create_dir_all(&work)?;
    let initramfs = initramfs(&root, &deepgate, &work)?;
    let log = work.join("console.log");
    let boot = Instant::now();
    let guest = vm::Guest { label: "systemd", init: "/sbin/init", memory_mib: 1536 };
    let status = vm::boot_guest(arch, &guest, &kernel.vmlinuz, &initramfs, &log, options.timeout);
    let seconds = boot.elapsed().as_secs_f64();
    eprintln!("systemd-test: guest ran {seconds:.1} s (boot to power-off); console log {}", log.display());
    match status? {
        0 => {
            eprintln!("systemd-test: passed ({seconds:.0} s)");
            Ok(())
        }
        rc => bail!("systemd-test: the guest's checks failed (status {rc}); see {}", log.display()),
    }
}

/// The cache entry's name: what the root is made of.
fn root_name() -> String {
    format!("{SUITE}-minbase-{}-recipe{ROOT_RECIPE}", PACKAGES.join("+"))
}

/// The Debian root as a gzip-compressed newc cpio, made once (debootstrap, then `make_root`'s changes) and
/// kept in `cache`. Made under a temporary name and renamed, so an interrupted run leaves nothing that looks
/// complete; older roots (another package list or recipe) are removed.
fn root_archive(cache: &Path) -> Result<PathBuf> {
    let name = root_name();
    let archive = cache.join(format!("{name}.cpio.gz"));
    if archive.exists() {
        return Ok(archive);
    }
    std::fs::create_dir_all(cache)?;
    if !crate::setup::is_root() {
        bail!("systemd-test makes its Debian root with debootstrap, which needs root: run it as root once");
    }
    let start = Instant::now();
    let tree = cache.join(format!("{name}.partial"));
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let include = format!("--include={}", PACKAGES.join(","));
    let tree_text = tree.to_string_lossy().into_owned();
    let arguments = ["--variant=minbase", include.as_str(), SUITE, tree_text.as_str(), MIRROR];
    eprintln!("systemd-test: debootstrap {}", arguments.join(" "));
    let status =
        Command::new("debootstrap").args(arguments).stdout(Stdio::null()).status().context(
            "starting debootstrap (Debian package `debootstrap`; `cargo xtask setup` installs it)",
        )?;
    if !status.success() {
        bail!("debootstrap failed ({status}); its log is {}/debootstrap/debootstrap.log", tree.display());
    }
    make_root(&tree)?;
    let partial = cache.join(format!("{name}.cpio.gz.partial"));
    pack_tree(&tree, &partial)?;
    std::fs::rename(&partial, &archive)?;
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    for entry in std::fs::read_dir(cache)?.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.ends_with(".cpio.gz") && entry.path() != archive {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    eprintln!("systemd-test: Debian root made in {:.0} s", start.elapsed().as_secs_f64());
    Ok(archive)
}

/// What the unit's own install steps (its header) do on a board, plus room: the `deepgate` system user, and
/// the `render` group the unit's SupplementaryGroups= names (on a full system udev's package makes it; a
/// minbase root has no udev). Apt's lists and caches and the documentation are dropped: the guest holds its
/// root in memory.
fn make_root(tree: &Path) -> Result<()> {
    let tree_text = tree.to_string_lossy();
    debian::output("chroot", &[&tree_text, "groupadd", "--system", "render"], None)?;
    debian::output(
        "chroot",
        &[
            &tree_text,
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/deepgate",
            "--shell",
            "/usr/sbin/nologin",
            "deepgate",
        ],
        None,
    )?;
    for directory in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        let path = tree.join(directory);
        for entry in
            std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?.flatten()
        {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Packs `tree` with the system's cpio (owners, modes, device nodes and hard links as they are) and gzip.
fn pack_tree(tree: &Path, out: &Path) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let status = Command::new("sh")
        .args([
            "-c",
            "find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --quiet | gzip -1",
        ])
        .current_dir(tree)
        .stdout(file)
        .status()
        .context("starting sh (find, cpio, gzip)")?;
    if !status.success() {
        bail!("packing {} with cpio and gzip failed ({status})", tree.display());
    }
    Ok(())
}

/// The guest's initramfs: the cached root, then a second archive with the project's files laid over it (the
/// kernel unpacks concatenated archives in order).
fn initramfs(root: &Path, deepgate: &Path, work: &Path) -> Result<PathBuf> {
    let repository = crate::ci::root();
    let mut archive = Archive::default();
    let stripped = work.join("stripped");
    std::fs::create_dir_all(&stripped)?;
    let binary = vm::initramfs::stripped(Arch::X86_64, deepgate, &stripped)?;
    // The bundle's layout (`cargo xtask dist`): bin/, board/, models/ under /opt/deepgate.
    archive.file("opt/deepgate/bin/deepgate", &binary)?;
    let mut data = vec!["models/manifest.toml".to_string(), "models/alignment.toml".into()];
    let manifest = std::fs::read_to_string(repository.join("models/manifest.toml"))?;
    for line in manifest.lines() {
        if let Some(file) = line.trim().strip_prefix("file = \"").and_then(|rest| rest.strip_suffix('"')) {
            data.push(format!("models/{file}"));
        }
    }
    data.push("board/host.toml".into());
    for file in &data {
        archive.file(&format!("opt/deepgate/{file}"), &repository.join(file))?;
    }
    archive.bytes(&format!("opt/deepgate/board/{INSTANCE}.toml"), board().into_bytes(), 0o644);
    // The unit exactly as shipped, enabled as `systemctl enable deepgate@vm` would.
    archive.file("etc/systemd/system/deepgate@.service", &repository.join("board/deepgate@.service"))?;
    let wants = "etc/systemd/system/multi-user.target.wants";
    archive.symlink(&format!("{wants}/deepgate@{INSTANCE}.service"), "/etc/systemd/system/deepgate@.service");
    // The camera: a pipe made at boot, a feeder started by the check, and its frames.
    archive.bytes(
        "etc/tmpfiles.d/deepgate-camera.conf",
        "d /run/deepgate-camera 0755 root root -\np /run/deepgate-camera/camera.y4m 0644 root root -\n"
            .into(),
        0o644,
    );
    archive.bytes("etc/systemd/system/deepgate-camera.service", CAMERA_UNIT.as_bytes().to_vec(), 0o644);
    archive.bytes("opt/deepgate-test/camera.sh", CAMERA_SCRIPT.as_bytes().to_vec(), 0o755);
    let (header, frame) = y4m_stream();
    archive.bytes("opt/deepgate-test/header.y4m", header, 0o644);
    archive.bytes("opt/deepgate-test/frame.y4m", frame, 0o644);
    // The check, started at boot beside the runtime (not after it: it watches the start itself).
    archive.bytes("etc/systemd/system/deepgate-systemd-test.service", CHECK_UNIT.as_bytes().to_vec(), 0o644);
    archive.symlink(&format!("{wants}/deepgate-systemd-test.service"), "../deepgate-systemd-test.service");
    archive.bytes("opt/deepgate-test/check.sh", check_script().into_bytes(), 0o755);
    // No login prompts on the console the host reads (there is no terminal on the other side).
    // Nor binfmt_misc's automount point (the autofs4 module is not in the guest): a warning on every boot.
    for unit in ["serial-getty@ttyS0.service", "getty@tty1.service", "proc-sys-fs-binfmt_misc.automount"] {
        archive.symlink(&format!("etc/systemd/system/{unit}"), "/dev/null");
    }

    let path = work.join("initramfs.cpio.gz");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    std::io::copy(&mut std::fs::File::open(root)?, &mut out)?;
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    archive.write(&mut encoder)?;
    encoder.finish()?.into_inner().map_err(|error| error.into_error())?.sync_all()?;
    Ok(path)
}

/// The guest's board: host.toml (CPU, stdout gate) with the camera on the pipe.
fn board() -> String {
    format!(
        "# systemd-test's guest (xtask/src/systemd_test.rs): host.toml with a camera on a named pipe.\n\
         inherit = \"host.toml\"\n\n\
         [board]\n\
         id = \"systemd-test\"\n\
         description = \"qemu guest under systemd: a Y4M camera on a pipe that can stall\"\n\n\
         [source]\n\
         kind = \"replay\"\n\
         paths = [\"{CAMERA_PIPE}\"]\n\
         repeat = false\n\
         frame_rate = 0.0\n"
    )
}

/// A Y4M stream header and one frame (`FRAME` line and planes): a luminance ramp with neutral chroma, inside
/// the limited range.
fn y4m_stream() -> (Vec<u8>, Vec<u8>) {
    let header = format!("YUV4MPEG2 W{FRAME_WIDTH} H{FRAME_HEIGHT} F5:1 Ip A1:1 C420jpeg\n").into_bytes();
    let mut frame = b"FRAME\n".to_vec();
    for y in 0..FRAME_HEIGHT {
        for x in 0..FRAME_WIDTH {
            frame.push((16 + (x + y) * 219 / (FRAME_WIDTH + FRAME_HEIGHT)) as u8);
        }
    }
    frame.resize(frame.len() + 2 * FRAME_WIDTH.div_ceil(2) * FRAME_HEIGHT.div_ceil(2), 128);
    (header, frame)
}

/// The camera's feeder: started (and restarted) by the check, never by boot.
const CAMERA_UNIT: &str = "\
[Unit]
Description=systemd-test camera: Y4M frames into /run/deepgate-camera/camera.y4m

[Service]
ExecStart=/opt/deepgate-test/camera.sh
";

/// Opens the pipe (blocking until the runtime opens its end), writes the stream header, then frames at about
/// 5 per second; the pipe holds less than a frame, so a reader that stops also stops the writer. While
/// /run/deepgate-camera/stall names a live process (the runtime being starved), it writes nothing but keeps
/// the pipe open: a camera that streams nothing. Once that process is gone the next write fails (no reader),
/// and the feeder opens the pipe again for the restarted runtime, which gets a fresh stream header.
const CAMERA_SCRIPT: &str = r#"#!/bin/bash
trap '' PIPE
pipe=/run/deepgate-camera/camera.y4m
stall=/run/deepgate-camera/stall
while :; do
    exec 3>"$pipe"
    echo "camera: a reader opened the pipe"
    if cat /opt/deepgate-test/header.y4m >&3; then
        while cat /opt/deepgate-test/frame.y4m >&3; do
            sleep 0.2
            while [ -s "$stall" ] && kill -0 "$(cat "$stall")" 2>/dev/null; do sleep 0.1; done
        done
    fi
    exec 3>&-
    echo "camera: the reader is gone"
done
"#;

const CHECK_UNIT: &str = "\
[Unit]
Description=systemd-test: the deepgate unit under systemd

[Service]
Type=oneshot
ExecStart=/opt/deepgate-test/check.sh
# Straight to the console the host reads (through journald it would lag, and the end cuts it short).
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
";

/// The check, in the guest: each step prints a `systemd-test:` line with the guest's uptime; the end prints
/// the unit's journal, the status line the host reads and leaves through isa-debug-exit.
fn check_script() -> String {
    format!(
        r#"#!/bin/bash
unit=deepgate@{INSTANCE}.service
say() {{ echo "systemd-test: $(cut -d' ' -f1 /proc/uptime) s: $*"; }}
show() {{ systemctl show -p ActiveState,SubState,NRestarts,MainPID,StatusText "$unit" | tr '\n' ' '; }}
prop() {{ systemctl show -P "$1" "$unit"; }}
finish() {{
    echo "----- journal of $unit and the camera -----"
    journalctl -b -u "$unit" -u deepgate-camera.service --no-pager -o short-monotonic | tail -n 60
    echo "{STATUS_MARKER}$1"
    # The serial line drains after the write returns: let it, before qemu ends.
    sleep 2
    printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    systemctl poweroff --force --force
}}
fail() {{ say "FAILED: $*; unit: $(show)"; finish 1; }}
# wait_for SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS.
wait_for() {{
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@"; do [ "$(date +%s)" -ge "$deadline" ] && return 1; sleep 0.1; done
}}
is() {{ [ "$(prop ActiveState)/$(prop SubState)" = "$1" ]; }}
restarts_above() {{ [ "$(prop NRestarts)" -gt "$1" ]; }}

say "PID 1 is $(cat /proc/1/comm), $(systemctl --version | head -n 1), kernel $(uname -r)"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is not systemd"
say "unit: $(systemctl show -P Type,WatchdogUSec,Restart,RestartUSec "$unit" | tr '\n' ' ')"

# 1. Started, models loaded (the start-up line), but no frame (the camera is not running): the runtime
# blocks opening the pipe, so no READY=1 and the unit stays activating.
wait_for 60 is activating/start || fail "the unit did not start"
started_up() {{ journalctl -b -u "$unit" -o cat --no-pager | grep -q "board \`systemd-test\`, models:"; }}
wait_for 240 started_up || fail "no start-up line (models loaded) within 240 s"
say "models loaded, no camera yet: $(show)"
sleep 5
is activating/start || fail "the unit left activating/start without a camera"
[ "$(prop NRestarts)" = 0 ] || fail "the unit restarted before the camera ran"
say "5 s later, still without frames: $(show)"

# 2. The camera runs: the first frame through the models sends READY=1, and only then is the unit active.
camera_start=$(date +%s.%N)
systemctl start --no-block deepgate-camera.service
wait_for 240 is active/running || fail "no READY=1 within 240 s of the camera starting"
ready=$(date +%s.%N)
say "READY $(awk "BEGIN {{ printf \"%.1f\", $ready - $camera_start }}") s after the camera started: $(show)"
status=$(prop StatusText)
case "$status" in health:*) ;; *) fail "STATUS= did not arrive (StatusText '$status')" ;; esac
first=$(prop MainPID)

# 3. Frames flow for more than one watchdog period (10 s): the pings keep it running.
sleep 15
is active/running || fail "the unit did not stay running while frames flowed"
[ "$(prop MainPID)" = "$first" ] && [ "$(prop NRestarts)" = 0 ] || fail "the runtime restarted while frames flowed"
say "15 s of frames later, still the same process: $(show)"

# 4. The camera stalls (the pipe stays open, nothing comes): the frame loop blocks, the pings stop, and
# systemd's watchdog kills the runtime; Restart= starts it again.
echo "$first" > /run/deepgate-camera/stall
stalled=$(date +%s)
say "camera stalled (runtime PID $first)"
wait_for 60 restarts_above 0 || fail "no restart within 60 s of the stall"
killed=$(date +%s)
kill -0 "$first" 2>/dev/null && fail "the stalled runtime (PID $first) still lives"
say "restarted $(( killed - stalled )) s after the stall: $(show)"
# The last ping came up to half a period (5 s) before the stall; the kill comes a period after it.
[ $(( killed - stalled )) -ge 4 ] || fail "restarted too soon for a 10 s watchdog"
journalctl -b -u "$unit" --no-pager | grep -q "Watchdog timeout" || fail "the journal shows no watchdog timeout"
journalctl -b -u "$unit" --no-pager | grep -q "status=6/ABRT" || fail "the runtime did not die of the watchdog's SIGABRT"
say "journal: $(journalctl -b -u "$unit" --no-pager -o cat | grep -m 1 "Watchdog timeout")"

# 5. Frames again: the new process reaches READY and runs.
wait_for 240 is active/running || fail "the restarted runtime did not reach READY within 240 s"
second=$(prop MainPID)
[ "$second" != "$first" ] || fail "the running process is still the stalled one"
[ "$(prop NRestarts)" = 1 ] || fail "expected exactly one restart"
say "READY again, new PID $second: $(show)"
say "PASSED"
finish 0
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_a_header_and_one_full_420_frame() {
        let (header, frame) = y4m_stream();
        assert!(header.starts_with(b"YUV4MPEG2 W320 H240 ") && header.ends_with(b"C420jpeg\n"));
        assert_eq!(frame.len(), b"FRAME\n".len() + 320 * 240 * 3 / 2);
        assert!(frame[6..].iter().all(|&value| (16..=235).contains(&value)), "limited range");
    }

    #[test]
    fn the_cached_root_is_named_after_what_it_holds() {
        let name = root_name();
        assert!(name.starts_with("bookworm-minbase-") && name.contains("systemd+systemd-sysv"), "{name}");
    }

    #[test]
    fn arguments_give_timeout_and_prepare_only() {
        let parse =
            |text: &str| parse_options(&text.split_whitespace().map(String::from).collect::<Vec<_>>());
        let options = parse("--timeout 30 --prepare-only").unwrap();
        assert_eq!(options.timeout, Duration::from_secs(30));
        assert!(options.prepare_only);
        assert!(parse("--arch aarch64").is_err());
    }
}
