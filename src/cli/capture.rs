//! `deepgate capture`: opens the board's V4L2 camera exactly as `run` does, captures N frames and prints one
//! JSON line saying what the camera is and gave (for installers, and for format checks in VM tests).

use anyhow::{bail, Context, Result};
use deepgate::capture::v4l2::{OpenError, V4l2Source};
use deepgate::capture::FrameSource;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Captures `frames` frames; exit status 0 when they all arrived, 1 otherwise (the line is printed either way);
/// an error (status 2) when the config is not a V4L2 source or the camera cannot be opened or is refused.
pub fn capture(board: &Path, frames: u64, save: Option<&Path>) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    let config = super::config_check::load_board(board)?;
    let Some(section) = config.source.v4l2() else {
        bail!("board config {}: `deepgate capture` needs [source] kind = \"v4l2\"", board.display());
    };
    let settings = section.settings()?;
    if let Some(directory) = save {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    }
    // Strict: at install time a camera that is absent or not the pinned one is an error, not a wait.
    let mut camera = V4l2Source::open(settings.clone(), true).map_err(OpenError::into_error)?;
    // Long enough for every frame at the slowest accepted rate, plus re-opens after a loss.
    let rate = camera.opened().and_then(|opened| opened.frame_rate).unwrap_or(settings.frame_rate).max(0.1);
    let deadline = Instant::now() + Duration::from_secs_f32(10.0 + 4.0 * frames as f32 / rate);
    let (mut delivered, mut first_sequence, mut checksum_first) = (0u64, None, None);
    let mut saved_error = None;
    while delivered < frames && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        match camera.next_frame() {
            Ok(Some(frame)) => {
                if first_sequence.is_none() {
                    first_sequence = Some(frame.sequence);
                    let digest = Sha256::digest(frame.data);
                    checksum_first = Some(deepgate::gate::to_hex(&digest[..8]));
                }
                if let Some(directory) = save {
                    let name = format!("frame-{:06}.{}", frame.sequence, extension(frame.format));
                    if let Err(error) = std::fs::write(directory.join(&name), frame.data) {
                        saved_error
                            .get_or_insert(format!("writing {}: {error}", directory.join(&name).display()));
                    }
                }
                delivered += 1;
            }
            Ok(None) => {}
            Err(error) => log::warn!("{error:#}"),
        }
    }
    let counters = camera.counters();
    let opened = camera.opened().cloned();
    drop(camera);
    let line = serde_json::json!({
        "type": "capture",
        "device": opened.as_ref().map(|o| o.path.clone()),
        "driver": opened.as_ref().map(|o| o.identity.driver.clone()),
        "card": opened.as_ref().map(|o| o.identity.card.clone()),
        "bus_info": opened.as_ref().map(|o| o.identity.bus_info.clone()),
        "virtual": opened.as_ref().map(|o| o.is_virtual),
        "format": opened.as_ref().map(|o| o.mode.format.name()),
        "width": opened.as_ref().map(|o| o.mode.width),
        "height": opened.as_ref().map(|o| o.mode.height),
        "stride": opened.as_ref().map(|o| o.mode.stride),
        "size_image": opened.as_ref().map(|o| o.mode.size_image),
        "frame_rate": opened.as_ref().and_then(|o| o.frame_rate),
        "frames": delivered,
        "dropped": counters.dropped,
        "short": counters.short,
        "corrupt": counters.corrupt,
        "errors": counters.errors,
        "timeouts": counters.timeouts,
        "reopens": counters.reopens,
        "repeated": counters.repeated,
        "frozen": counters.frozen,
        "clock_backwards": counters.clock_backwards,
        "first_sequence": first_sequence,
        "checksum_first": checksum_first,
    });
    println!("{line}");
    if let Some(error) = saved_error {
        eprintln!("deepgate capture: {error}");
        return Ok(ExitCode::from(1));
    }
    if delivered < frames {
        eprintln!("deepgate capture: {delivered} of {frames} frames arrived");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn extension(format: deepgate::frame::PixelFormat) -> &'static str {
    match format {
        deepgate::frame::PixelFormat::Mjpeg => "jpg",
        other => match other.name() {
            "YUYV" => "yuyv",
            "UYVY" => "uyvy",
            "NV12" => "nv12",
            "GREY" => "grey",
            "RGB24" => "rgb",
            _ => "bgr",
        },
    }
}
