//! The `deepgate` command: parses the command line and hands over to one module per subcommand.

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Deepfake-aware face gate for access-control kiosks.
#[derive(Parser)]
#[command(name = "deepgate", version, about)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

/// The board config used when `--board` is not given.
const DEFAULT_BOARD: &str = "board/host.toml";

#[derive(Subcommand)]
enum Command {
    /// The main job: source → pipeline → gate, until the source ends or SIGINT/SIGTERM.
    Run {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
    },
    /// Replays images, directories and Y4M videos: one JSON line per frame and per verdict on stdout.
    Replay {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        /// Print per-stage timings (median, min, max) to stderr at the end.
        #[arg(long)]
        timings: bool,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Writes the aligned face crops the classifier sees, exactly as the runtime makes them (for training).
    Crops {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        /// Output directory (created if missing); gets one PNG per face and an index.csv.
        #[arg(long)]
        out: PathBuf,
        /// Crop side in pixels; default: the classifier's input size, else the alignment's default_size.
        #[arg(long)]
        size: Option<usize>,
        /// Only the main (largest) face of each frame.
        #[arg(long)]
        main_only: bool,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Scores a labelled set (CSV with file,label; 0 genuine, 1 fake) and prints ISO/IEC 30107-3 metrics.
    Eval {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        #[arg(long)]
        labels: PathBuf,
        /// Print the summary as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Draw the ROC curve into this PNG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// The `[decision] frame_threshold` that meets a target BPCER on a site's own genuine captures (images,
    /// directories, Y4M videos, or the board's camera), with the score distribution it rests on. Without inputs:
    /// the board's `[source]`.
    Calibrate {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        /// The share of genuine frames allowed at or above the threshold.
        #[arg(long, default_value_t = 0.05)]
        target_bpcer: f64,
        /// Read the board's V4L2 camera (`[source] kind = "v4l2"`) for --frames frames.
        #[arg(long)]
        camera: bool,
        /// Frames to take from the camera.
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Draw the score histogram with the thresholds into this PNG file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write a copy of the board file, with only `[decision] frame_threshold` changed, to this file (in the
        /// board file's directory).
        #[arg(long)]
        write: Option<PathBuf>,
        inputs: Vec<PathBuf>,
    },
    /// Where the classifier saw manipulation in the main face of IMAGE: a PNG of the aligned crop (x4) beside
    /// the same crop with the heat over it, and one JSON line. A still, or the first frame of a video.
    Explain {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// map: the model's predicted manipulation map; occlusion: occlusion sensitivity; auto: map when the
        /// model has one.
        #[arg(long, value_enum, default_value = "auto")]
        method: cli::explain::Method,
        /// Occlusion: side of the patch, in crop pixels.
        #[arg(long, default_value_t = 16)]
        patch: usize,
        /// Occlusion: step between patches, in crop pixels.
        #[arg(long, default_value_t = 8)]
        stride: usize,
        image: PathBuf,
    },
    /// Per-stage timings on synthesised camera frames of each pixel format (medians, measured in one run).
    Bench(cli::bench::BenchOptions),
    /// The preprocessing on the CPU reference and on the CUDA kernels side by side (and, with `--torch PYTHON`,
    /// the same work in PyTorch on the same GPU): per-stage medians, ratios, the letterbox kernel's bandwidth.
    BenchGpu {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        #[arg(long, default_value = "tests/fixtures/faces/obama.jpg")]
        image: PathBuf,
        #[arg(long, default_value = "1920x1080")]
        size: String,
        #[arg(long, value_delimiter = ',', default_value = "YUYV,NV12,RGB24")]
        formats: Vec<String>,
        #[arg(long, default_value_t = 200)]
        frames: usize,
        /// A Python with PyTorch (CUDA) to run the same preprocessing the PyTorch way, in the same run.
        #[arg(long)]
        torch: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Decision receipts: `verify FILE` checks a hash-chained (optionally signed) audit log and names the
    /// first broken entry; `keygen --out FILE` makes a device signing key; `public-key FILE` prints its public key.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// The OSDP gate's commissioning: `reset-key --board FILE` re-arms install mode for the next start.
    Osdp {
        #[command(subcommand)]
        action: OsdpAction,
    },
    /// Site configuration: `check` prints the board config merged with the site override, validated.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Prints what this machine offers (CPU features, CUDA, cameras with their identity and formats) as JSON.
    Probe {
        /// Also open the GPU path as `run` would (loads libcuda and libnvrtc, compiles or loads the kernels
        /// into the kernel cache) and report the device, or why the GPU path cannot be used.
        #[arg(long)]
        gpu: bool,
    },
    /// Installs a signed update bundle (from `cargo xtask dist`) into the inactive A/B slot under
    /// ROOT/opt/deepgate, switches `current` to it, starts it, and switches back when it does not reach READY
    /// in time (README, "Updates"); exit status 0 installed, 1 rolled back, 2 refused (nothing changed).
    Install {
        bundle: PathBuf,
        /// The signature file; default: BUNDLE.sig.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The release key's public half (hex): pinned at ROOT/etc/deepgate/update.pub by the first install;
        /// later it must equal the pinned key.
        #[arg(long)]
        trust_key: Option<PathBuf>,
        /// The file system root the layout is under.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Install a version older than the current one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Start the new version with board/BOARD.toml of the bundle; default: the board it was made for.
        #[arg(long)]
        board: Option<String>,
        /// Restart this systemd unit (e.g. deepgate@jetson-orin-nano) as the readiness check, instead of a
        /// trial `deepgate run` with a notify socket of the installer's.
        #[arg(long)]
        restart_unit: Option<String>,
        /// Seconds the new version has to send READY=1.
        #[arg(long, default_value_t = 300.0)]
        ready_timeout: f64,
        /// Only verify the signature and every entry of the archive; write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Opens the board's V4L2 camera as `run` does, captures frames and prints one JSON line describing the
    /// camera, the accepted mode and the frame counters; exit status 0 when all frames arrived, 1 if not,
    /// 2 when the config or the camera is refused.
    Capture {
        /// A board config with `[source] kind = "v4l2"`.
        #[arg(long)]
        board: PathBuf,
        #[arg(long, default_value_t = 30)]
        frames: u64,
        /// Write each frame's raw bytes into this directory (created if missing) for inspection.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Records the camera the board selects (driver, card, bus_info, USB vendor, product and serial) in the
    /// board's `source.enrolment` file: from then on only that camera is used, across restarts. Prints one JSON
    /// line; exit status 2 when the camera is not found or refused, or one is enrolled already without --replace.
    Enroll {
        /// A board config with `[source] kind = "v4l2"` and `source.enrolment`.
        #[arg(long)]
        board: PathBuf,
        /// The device node to enrol instead of the board's `source.device` (the board's pins still apply).
        #[arg(long)]
        device: Option<PathBuf>,
        /// Replace the camera enrolled now (logged).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Prints the merged, validated configuration (TOML; keys from the site file marked with it); exit status 2
    /// naming the file and key when the board or the site file is refused.
    Check {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: PathBuf,
        /// The site override (must exist); default: `DEEPGATE_SITE`, else /etc/deepgate/site.toml if present.
        #[arg(long)]
        site: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OsdpAction {
    /// Removes the OSDP site key and the record of the install window (local access to the state directory
    /// needed), so that the next `deepgate run` arms install mode for `install_window_s`; logged.
    ResetKey {
        #[arg(long)]
        board: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Checks every entry's hash and order (and, with the device's public key, its signature), following the
    /// chain across the rotated files FILE.N ... FILE.1 into FILE; exit status 1 at the first broken entry.
    Verify {
        file: PathBuf,
        /// The device's public key (hex, from `audit keygen`): every entry must be signed by it.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Makes a device signing key (mode 600) and prints its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the public key (hex) of a device key file (`[audit] key`, `[gate] signing_key`), for the
    /// controller or a verifier to pin.
    PublicKey { key: PathBuf },
}

fn main() -> ExitCode {
    if let Err(missing) = host_cpu_check() {
        eprintln!(
            "deepgate: this build is for x86-64-v3 CPUs (AVX2, FMA: .cargo/config.toml) and this CPU lacks {}; \
             rebuild with RUSTFLAGS=\"-C target-cpu=native\"",
            missing.join(", ")
        );
        return ExitCode::from(2);
    }
    cli::logging::init();
    let arguments = Arguments::parse();
    let result = match arguments.command {
        Command::Run { board } => cli::run::run(&board),
        Command::Replay { board, timings, inputs } => cli::replay::replay(&board, &inputs, timings),
        Command::Crops { board, out, size, main_only, inputs } => {
            cli::crops::crops(&board, &out, size, main_only, &inputs)
        }
        Command::Eval { board, labels, json, plot } => {
            cli::eval::eval(&board, &labels, json, plot.as_deref())
        }
        Command::Calibrate { board, target_bpcer, camera, frames, json, plot, write, inputs } => {
            let options = cli::calibrate::Options { target_bpcer, json, plot, write, camera, frames };
            cli::calibrate::calibrate(&board, &inputs, &options)
        }
        Command::Explain { board, out, method, patch, stride, image } => {
            cli::explain::explain(&board, &image, &out, method, cli::explain::Occlusion { patch, stride })
        }
        Command::Bench(options) => cli::bench::bench(&options),
        Command::BenchGpu { board, image, size, formats, frames, torch, json } => {
            cli::bench_gpu::bench_gpu(&board, &image, &size, &formats, frames, torch.as_deref(), json)
        }
        Command::Audit { action: AuditAction::Verify { file, public_key } } => {
            cli::audit::verify(&file, public_key.as_deref())
        }
        Command::Audit { action: AuditAction::Keygen { out } } => cli::audit::keygen(&out),
        Command::Audit { action: AuditAction::PublicKey { key } } => cli::audit::public_key(&key),
        Command::Osdp { action: OsdpAction::ResetKey { board } } => cli::osdp::reset_key(&board),
        Command::Config { action: ConfigAction::Check { board, site } } => {
            cli::config_check::check(&board, site.as_deref())
        }
        Command::Probe { gpu } => cli::probe::probe(gpu),
        Command::Install {
            bundle,
            signature,
            trust_key,
            root,
            allow_downgrade,
            board,
            restart_unit,
            ready_timeout,
            check,
        } => match std::time::Duration::try_from_secs_f64(ready_timeout) {
            Ok(ready_timeout) => {
                let options = deepgate::update::install::Options {
                    root,
                    bundle,
                    signature,
                    trust_key,
                    allow_downgrade,
                    board,
                    restart_unit,
                    ready_timeout,
                };
                cli::install::install(&options, check)
            }
            Err(_) => Err(anyhow::anyhow!("--ready-timeout {ready_timeout}: not a number of seconds")),
        },
        Command::Capture { board, frames, save } => cli::capture::capture(&board, frames, save.as_deref()),
        Command::Enroll { board, device, replace } => cli::enroll::enroll(&board, device.as_deref(), replace),
    };
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            log::error!("{error:#}");
            eprintln!("deepgate: {error:#}");
            ExitCode::from(2)
        }
    };
    cli::logging::finish();
    code
}

/// The x86-64-v3 features the x86_64 build is compiled for (`.cargo/config.toml`) that this CPU's
/// `/proc/cpuinfo` does not list: checked before any of our code runs vector instructions, so that an older
/// CPU gets a message instead of SIGILL. `is_x86_feature_detected!` cannot tell: it answers yes for every
/// feature the build enables. An unreadable `/proc/cpuinfo` is not an error (nothing to say either way), nor is
/// anything on a build that was not compiled for those features.
#[cfg(target_arch = "x86_64")]
fn host_cpu_check() -> Result<(), Vec<&'static str>> {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return Ok(());
    };
    let missing = missing_features(&cpuinfo);
    if !cfg!(target_feature = "avx2") || missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host_cpu_check() -> Result<(), Vec<&'static str>> {
    Ok(())
}

/// The x86-64-v3 features that the first `flags` line of a `/proc/cpuinfo` text lacks (none when it has no
/// such line: nothing to go by).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn missing_features(cpuinfo: &str) -> Vec<&'static str> {
    const NEEDED: [&str; 7] = ["avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"];
    let Some(flags) = cpuinfo.lines().find_map(|line| line.strip_prefix("flags")) else {
        return Vec::new();
    };
    let flags: Vec<&str> = flags.trim_start_matches([' ', '\t', ':']).split_whitespace().collect();
    NEEDED.into_iter().filter(|feature| !flags.contains(feature)).collect()
}

#[cfg(test)]
mod tests {
    use super::missing_features;

    #[test]
    fn cpu_flags_name_what_an_older_cpu_lacks() {
        let haswell =
            "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi1 bmi2 f16c movbe abm\nbugs\t\t:\n";
        assert!(missing_features(haswell).is_empty());
        let sandy_bridge = "flags\t\t: fpu sse2 sse4_2 avx popcnt\n";
        assert_eq!(missing_features(sandy_bridge), ["avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"]);
        // "avx512f" is not "avx2"; a text without a flags line says nothing.
        assert_eq!(missing_features("flags : avx avx512f fma bmi1 bmi2 f16c movbe")[..], ["avx2"]);
        assert!(missing_features("model name : something\n").is_empty());
    }
}
