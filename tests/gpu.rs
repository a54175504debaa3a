//! The GPU path as a user meets it, through the `deepgate` command: `backend = "auto"` gives the CPU's
//! results whether or not a GPU is there; `backend = "cuda"` without a GPU tells the controller (`gpu_lost`)
//! and still decides; a real CUDA fault in the middle of a stream (the `DEEPGATE_CUDA_FAULT_AT` debug switch)
//! loses no frame and no verdict; models placed on the GPU (tract's CUDA runtime) decide as on the CPU and
//! survive the same fault. The last two need a GPU and say so where there is none.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deepgate(arguments: &[&str], fault_at: Option<u64>) -> Output {
    let mut command = Command::new(common::exe());
    command.args(arguments).current_dir(common::root()).env("RUST_LOG", "info");
    if let Some(frame) = fault_at {
        command.env("DEEPGATE_CUDA_FAULT_AT", frame.to_string());
    }
    command.output().unwrap()
}

fn board(backend: &str) -> PathBuf {
    common::board(None, &[], &[("runtime.backend", &format!("\"{backend}\""))])
}

/// `backend` with both models' inference placed on the GPU.
fn board_with_inference_on_gpu(backend: &str) -> PathBuf {
    let backend = format!("\"{backend}\"");
    common::board(
        None,
        &[],
        &[
            ("runtime.backend", &backend),
            ("runtime.detector_inference", "\"cuda\""),
            ("runtime.classifier_inference", "\"cuda\""),
        ],
    )
}

/// The verdicts' decisions and frame counts, in order.
fn decisions(stdout: &[u8]) -> Vec<(String, u64)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| line.contains("\"type\":\"verdict\""))
        .map(|line| {
            let verdict: serde_json::Value = serde_json::from_str(line).unwrap();
            (verdict["decision"].as_str().unwrap().to_string(), verdict["frames"].as_u64().unwrap())
        })
        .collect()
}

fn inference_usable() -> Result<(), String> {
    deepgate::infer::cuda_runtime().map(|_| ()).map_err(|error| format!("{error:#}"))
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
    return deepgate::gpu::probe().map_err(|error| format!("{error:#}"));
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
        common::skip(common::Need::NoGpu, "a GPU is here");
        return;
    }
    // The pixel work and both models ask for the GPU: three reasons logged, one fault for the controller.
    let output = deepgate(&["run", "--board", board_with_inference_on_gpu("cuda").to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("backend \"cuda\": no GPU path ("), "{stderr}");
    for model in ["blazeface_front_128", "deepgate_student"] {
        assert!(
            stderr.contains(&format!("model `{model}`: no GPU inference: ")),
            "the log says why {model} is not on the GPU: {stderr}"
        );
    }
    assert!(stderr.contains("inference: detector on the CPU, classifier on the CPU"), "{stderr}");
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
        common::skip(common::Need::Gpu, &format!("no usable GPU ({reason})"));
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

#[test]
fn models_on_the_gpu_decide_as_on_the_cpu_and_a_fault_moves_them_back_without_loss() {
    if let Err(reason) = gpu_usable().and_then(|()| inference_usable()) {
        common::skip(common::Need::Gpu, &format!("no GPU inference here ({reason})"));
        return;
    }
    let inputs = inputs();
    let on_cpu = replay(&board("cpu"), &inputs, None);
    let expected = decisions(&on_cpu.stdout);
    assert!(!expected.is_empty());

    let on_gpu = replay(&board_with_inference_on_gpu("cuda"), &inputs, None);
    let stderr = String::from_utf8_lossy(&on_gpu.stderr);
    assert!(stderr.contains("inference: detector on the GPU, classifier on the GPU"), "{stderr}");
    assert!(!stderr.contains("the CPU takes over"), "{stderr}");
    assert_eq!(decisions(&on_gpu.stdout), expected, "the same decisions after the same frames");

    // A sticky fault in the pixel work at the 6th frame leaves the CUDA context unusable, for tract too: each
    // model's next GPU run fails, is redone on the CPU, and the stream goes on as before.
    let faulty = replay(&board_with_inference_on_gpu("cuda"), &inputs, Some(5));
    let stderr = String::from_utf8_lossy(&faulty.stderr);
    assert_eq!(stderr.matches("the GPU path failed; the CPU takes over").count(), 1, "{stderr}");
    assert_eq!(
        stderr
            .matches("model `blazeface_front_128`: inference on the GPU failed; the CPU takes over")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(decisions(&faulty.stdout), expected, "no frame and no verdict lost");
}
