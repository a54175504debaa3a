//! The GPU path as a user meets it, through the `deepgate` command: `backend = "auto"` gives the CPU's
//! results whether or not a GPU is there; `backend = "cuda"` without a GPU tells the controller (`gpu_lost`)
//! and still decides; a real CUDA fault in the middle of a stream (the `DEEPGATE_CUDA_FAULT_AT` debug switch)
//! loses no frame and no verdict. The last needs a GPU and says so where there is none.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deepgate(arguments: &[&str], fault_at: Option<u64>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deepgate"));
    command.args(arguments).current_dir(common::root()).env("RUST_LOG", "info");
    if let Some(frame) = fault_at {
        command.env("DEEPGATE_CUDA_FAULT_AT", frame.to_string());
    }
    command.output().unwrap()
}

fn board(backend: &str) -> PathBuf {
    common::board(None, &[], &[("backend = \"cpu\"", &format!("backend = \"{backend}\""))])
}

/// A 12-frame video of a face drifting across, and a photo: a stream and a still.
fn inputs() -> Vec<PathBuf> {
    let video = common::temp_dir("gpu-video").join("astronaut.y4m");
    common::drifting_video(&video, "faces/astronaut.png", 320, 400, 12, 4);
    vec![video, common::fixture("faces/obama.jpg")]
}

fn replay(board: &Path, inputs: &[PathBuf], fault_at: Option<u64>) -> Output {
    let mut arguments = vec!["replay", "--board", board.to_str().unwrap()];
    arguments.extend(inputs.iter().map(|path| path.to_str().unwrap()));
    let output = deepgate(&arguments, fault_at);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn gpu_usable() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    return deepgate::preprocess::cuda::gpu::probe().map_err(|error| format!("{error:#}"));
    #[cfg(not(feature = "cuda"))]
    Err("built without the `cuda` feature".into())
}

#[test]
fn the_auto_backend_gives_the_cpus_results_with_or_without_a_gpu() {
    let inputs = inputs();
    let on_cpu = replay(&board("cpu"), &inputs, None);
    let auto = replay(&board("auto"), &inputs, None);
    let stderr = String::from_utf8_lossy(&auto.stderr);
    match gpu_usable() {
        Ok(()) => assert!(stderr.contains("pixel work on the GPU"), "{stderr}"),
        Err(_) => assert!(stderr.contains("backend \"auto\": no GPU path ("), "{stderr}"),
    }
    let lines = String::from_utf8_lossy(&on_cpu.stdout);
    assert!(lines.contains("\"type\":\"verdict\""), "{lines}");
    assert_eq!(String::from_utf8_lossy(&auto.stdout), lines, "frames and verdicts as on the CPU");
}

#[test]
fn the_cuda_backend_without_a_gpu_tells_the_controller_and_still_decides() {
    if let Ok(()) = gpu_usable() {
        eprintln!(
            "SKIPPED the_cuda_backend_without_a_gpu_tells_the_controller_and_still_decides: a GPU is here"
        );
        return;
    }
    let output = deepgate(&["run", "--board", board("cuda").to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("backend \"cuda\": no GPU path ("), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let health: Vec<&str> = stdout.lines().filter(|line| line.contains("\"type\":\"health\"")).collect();
    assert_eq!(health.len(), 1, "one health change: {stdout}");
    assert!(
        health[0].contains("\"state\":\"gpu_lost\"") && health[0].contains("\"can_decide\":true"),
        "{stdout}"
    );
    assert!(stdout.lines().filter(|line| line.contains("\"type\":\"verdict\"")).count() >= 3, "{stdout}");
}

#[test]
fn a_cuda_fault_mid_stream_loses_no_frame_and_no_verdict() {
    if let Err(reason) = gpu_usable() {
        eprintln!("SKIPPED a_cuda_fault_mid_stream_loses_no_frame_and_no_verdict: no usable GPU ({reason})");
        return;
    }
    let inputs = inputs();
    let on_cpu = replay(&board("cpu"), &inputs, None);
    // The 6th frame's upload points the kernels at an address no allocation has: an illegal-address fault,
    // which is sticky (the CUDA context is unusable afterwards).
    let faulty = replay(&board("cuda"), &inputs, Some(5));
    let stderr = String::from_utf8_lossy(&faulty.stderr);
    assert!(stderr.contains("pixel work on the GPU"), "{stderr}");
    assert_eq!(stderr.matches("the GPU path failed; the CPU takes over").count(), 1, "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&faulty.stdout),
        String::from_utf8_lossy(&on_cpu.stdout),
        "every frame and verdict as on the CPU"
    );
}
