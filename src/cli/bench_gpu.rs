//! `deepgate bench-gpu`: the preprocessing stages on the CPU reference and on the CUDA kernels, side by side in
//! one run on the same frames, and (with `--torch PYTHON`) the same work done the way a Python user would do it
//! in PyTorch on the same GPU: per-stage medians, their ratios, and the fused letterbox kernel's achieved
//! bandwidth against the device's peak. Then each model's inference on tract's CPU plan and on its CUDA runtime,
//! with the placement (`[runtime] detector_inference` / `classifier_inference`) the figures call for. Needs a
//! GPU; says why not and exits 2 elsewhere.
// Without the `cuda` feature only the refusal remains of this command.
#![cfg_attr(
    not(feature = "cuda"),
    allow(unused_imports, unused_variables, dead_code, clippy::needless_return)
)]

use anyhow::{bail, Context, Result};
use deepgate::capture::synthetic::camera_frame;
use deepgate::config::BoardConfig;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::manifest::{Manifest, Role};
use deepgate::preprocess::cuda::abi::CropJob;
use deepgate::preprocess::{cpu, normalise_into, Affine, Letterbox, RgbImage};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// The PyTorch side, run by `--torch PYTHON` (written to a temporary file: the bundle has no Python sources).
const TORCH_SCRIPT: &str = include_str!("bench_torch.py");

/// Faces per frame in the crops stage, as a kiosk with a queue of people might see.
const FACES: usize = 3;
const QUALITY_CROP: usize = deepgate::pipeline::QUALITY_CROP;

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Times `work` `frames` times after 5 warm-up calls; the median in milliseconds.
fn time(frames: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..5 {
        work()?;
    }
    let mut times = Vec::with_capacity(frames);
    for _ in 0..frames {
        let start = Instant::now();
        work()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut times))
}

/// `FACES` aligned-looking crops across the frame: a face a third of the frame high, slightly rotated.
fn face_maps(width: u32, height: u32, side: usize) -> Vec<Affine> {
    (0..FACES)
        .map(|index| {
            let (cx, cy) = (width as f32 * (index as f32 + 1.0) / (FACES as f32 + 1.0), height as f32 / 2.0);
            Affine::square_crop(cx, cy, height as f32 / 3.0 / side as f32, 0.1 * index as f32 - 0.1, side)
        })
        .collect()
}

pub fn bench_gpu(
    board: &Path,
    image: &Path,
    size: &str,
    formats: &[String],
    frames: usize,
    torch: Option<&Path>,
    json_output: bool,
) -> Result<ExitCode> {
    let (width, height) = super::bench::parse_size(size)?;
    let formats: Vec<PixelFormat> =
        formats.iter().map(|f| super::bench::parse_format(f)).collect::<Result<_>>()?;
    if formats.contains(&PixelFormat::Mjpeg) {
        bail!("MJPEG is decoded on the CPU before any pixel work; bench a raw format");
    }
    if !(1..=100_000).contains(&frames) {
        bail!("--frames must be 1 to 100000");
    }
    let config = BoardConfig::load(board)?;
    let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
    let detector = manifest.get(&config.models.detector, Role::Detector)?.input.clone();
    let classifier = match &config.models.classifier {
        Some(id) => manifest.get(id, Role::Classifier)?.input.clone(),
        None => bail!("the board config names no classifier: the crops stage has nothing to make"),
    };
    #[cfg(feature = "cuda")]
    let mut gpu = {
        use deepgate::preprocess::cuda::gpu;
        if let Err(reason) = deepgate::gpu::probe() {
            eprintln!("deepgate bench-gpu: no usable GPU here ({reason:#})");
            return Ok(ExitCode::from(2));
        }
        gpu::CudaKernels::open(gpu::GpuOptions { cache: gpu::default_cache(), ..Default::default() })?
    };
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (&detector, &classifier, torch, json_output);
        eprintln!("deepgate bench-gpu: this build has no CUDA path (the `cuda` feature)");
        return Ok(ExitCode::from(2));
    }
    #[cfg(feature = "cuda")]
    {
        use deepgate::preprocess::cuda::Kernels;
        let photo = image::open(image).with_context(|| format!("reading {}", image.display()))?.to_rgb8();
        let photo = image::imageops::resize(&photo, width, height, image::imageops::FilterType::Triangle);
        let peak = gpu.peak_bandwidth_gbps()?;
        let device = gpu.info().to_string();
        let (input_w, input_h) = detector.image_size();
        let (crop_w, crop_h) = classifier.image_size();
        let quality_maps = face_maps(width, height, QUALITY_CROP);
        let classifier_maps = face_maps(width, height, crop_w);
        let jobs: Vec<CropJob> = quality_maps
            .iter()
            .zip(&classifier_maps)
            .flat_map(|(quality, crop)| {
                [
                    CropJob { map: *quality, width: QUALITY_CROP, height: QUALITY_CROP, rgb: true },
                    CropJob { map: *crop, width: crop_w, height: crop_h, rgb: false },
                ]
            })
            .collect();
        let mut results = Vec::new();
        for format in formats {
            let stride = format.min_stride(width);
            let data = camera_frame(photo.as_raw(), width, height, format, stride)?;
            let frame = Frame::still(format, width, height, stride, &data, "bench");
            let map = Letterbox::fit(width, height, input_w, input_h).to_source_map();
            let mut input = vec![0f32; input_w * input_h * 3];
            let mut image = RgbImage::new(input_w, input_h);
            // One warper kept across the timed calls, as the pipeline keeps one (its scratch is reused).
            let mut warper = cpu::Warper::default();
            let cpu_letterbox = time(frames, || {
                warper.warp(&frame, &map, &mut image)?;
                normalise_into(&image, &detector, &mut input)
            })?;
            let (mut quality, mut crop) =
                (RgbImage::new(QUALITY_CROP, QUALITY_CROP), RgbImage::new(crop_w, crop_h));
            let mut tensors = vec![0f32; FACES * crop_w * crop_h * 3];
            let mut images = vec![0u8; FACES * QUALITY_CROP * QUALITY_CROP * 3];
            let cpu_crops = time(frames, || {
                for (index, (q, c)) in quality_maps.iter().zip(&classifier_maps).enumerate() {
                    warper.warp(&frame, q, &mut quality)?;
                    warper.warp(&frame, c, &mut crop)?;
                    let len = crop_w * crop_h * 3;
                    normalise_into(&crop, &classifier, &mut tensors[index * len..(index + 1) * len])?;
                }
                Ok(())
            })?;
            let upload = time(frames, || gpu.upload(&frame))?;
            let gpu_letterbox = time(frames, || gpu.letterbox(&map, &detector, &mut input))?;
            let gpu_crops = time(frames, || gpu.crops(&jobs, &classifier, &mut tensors, &mut images))?;
            let kernel_ms = gpu.letterbox_kernel_ms(&map, &detector, 200)? as f64;
            // One pass: the frame read once, the input written once.
            let bytes = (data.len() + input.len() * 4) as f64;
            let achieved = bytes / (kernel_ms * 1e-3) / 1e9;
            let torch_result = match torch {
                Some(python) => Some(run_torch(python, width, height, format, frames, crop_w)?),
                None => None,
            };
            let ours = upload + gpu_letterbox + gpu_crops;
            let result = json!({
                "format": format.name(), "width": width, "height": height, "frames": frames, "faces": FACES,
                "cpu_ms": { "letterbox": cpu_letterbox, "crops": cpu_crops },
                "gpu_ms": { "upload": upload, "letterbox": gpu_letterbox, "crops": gpu_crops,
                            "letterbox_kernel": kernel_ms },
                "letterbox_kernel_gbps": achieved, "peak_gbps": peak,
                "letterbox_overhead_ms": gpu_letterbox - kernel_ms,
                "torch_ms": torch_result,
                "torch_over_ours": torch_result.as_ref().and_then(|t| t["total"].as_f64()).map(|t| t / ours),
            });
            if !json_output {
                println!("{} {width}x{height}, {frames} frames, {FACES} faces, on {device}", format.name());
                println!("  CPU reference: letterbox {cpu_letterbox:.3} ms, crops {cpu_crops:.3} ms");
                println!(
                    "  CUDA kernels:  upload {upload:.3} ms, letterbox {gpu_letterbox:.3} ms (kernel alone \
                     {kernel_ms:.4} ms: {achieved:.1} GB/s of {peak:.0} GB/s peak), crops {gpu_crops:.3} ms"
                );
                // What a CUDA graph could save at most: the letterbox stage's time outside its kernel (launch,
                // read-back, synchronisation), against the kernel's own.
                println!(
                    "  letterbox stage outside the kernel (launch, read-back, sync): {:.4} ms against {kernel_ms:.4} \
                     ms in it",
                    gpu_letterbox - kernel_ms
                );
                println!(
                    "  ratio CPU / CUDA: letterbox {:.1}x, crops {:.1}x",
                    cpu_letterbox / (upload + gpu_letterbox),
                    cpu_crops / gpu_crops
                );
                if let Some(torch) = &torch_result {
                    println!(
                        "  PyTorch ({}): upload {:.3} ms, letterbox {:.3} ms, crops {:.3} ms; PyTorch / deepgate \
                         {:.2}x",
                        torch["torch"],
                        torch["upload"].as_f64().unwrap_or(f64::NAN),
                        torch["letterbox"].as_f64().unwrap_or(f64::NAN),
                        torch["crops"].as_f64().unwrap_or(f64::NAN),
                        torch["total"].as_f64().unwrap_or(f64::NAN) / ours
                    );
                }
            }
            results.push(result);
        }
        let mut inference = Vec::new();
        for (id, role) in [
            (config.models.detector.as_str(), Role::Detector),
            (config.models.classifier.as_deref().unwrap_or(""), Role::Classifier),
        ] {
            let result = bench_inference(&manifest, manifest.get(id, role)?, frames)?;
            if !json_output {
                println!("{}", result["text"].as_str().unwrap_or_default());
            }
            inference.push(result);
        }
        if json_output {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({ "device": device, "results": results, "inference": inference })
                )?
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// One model's inference on tract's CPU plan and on tract's CUDA runtime, side by side (median ms per run, the
/// input a fixed pattern), and the placement the figures say to configure: the GPU only when it is at least 10%
/// faster, since the CPU plan is the reference and needs no driver.
#[cfg(feature = "cuda")]
fn bench_inference(
    manifest: &Manifest,
    entry: &deepgate::manifest::ModelEntry,
    frames: usize,
) -> Result<serde_json::Value> {
    use deepgate::infer::Placement;
    use deepgate::infer::{fill_test_pattern, Model};
    let pattern = |model: &mut Model| {
        model.write_input(|_, values| {
            fill_test_pattern(values);
            Ok(())
        })
    };
    let mut on_cpu = Model::load(manifest, entry)?;
    pattern(&mut on_cpu)?;
    let cpu_ms = time(frames, || on_cpu.run().map(drop))?;
    let mut on_gpu = Model::load_on(manifest, entry, Placement::Cuda)?;
    if let Some(error) = on_gpu.take_gpu_failure() {
        return Ok(json!({
            "model": entry.id, "cpu_ms": cpu_ms, "gpu_ms": null, "placement": "cpu", "gpu_error": format!("{error:#}"),
            "text": format!("  inference {}: CPU {cpu_ms:.3} ms; not on the GPU: {error:#}", entry.id),
        }));
    }
    pattern(&mut on_gpu)?;
    let gpu_ms = time(frames, || on_gpu.run().map(drop))?;
    if let Some(error) = on_gpu.take_gpu_failure() {
        bail!("{}: inference on the GPU failed while timing it: {error:#}", entry.id);
    }
    let placement = if gpu_ms * 1.1 <= cpu_ms { "cuda" } else { "cpu" };
    Ok(json!({
        "model": entry.id, "cpu_ms": cpu_ms, "gpu_ms": gpu_ms, "cpu_over_gpu": cpu_ms / gpu_ms, "placement": placement,
        "text": format!(
            "  inference {}: CPU {cpu_ms:.3} ms, GPU (tract CUDA) {gpu_ms:.3} ms, ratio CPU / GPU {:.2}x: \
             configure {}_inference = \"{placement}\"",
            entry.id,
            cpu_ms / gpu_ms,
            match entry.role { Role::Detector => "detector", Role::Classifier => "classifier" },
        ),
    }))
}

/// Runs the PyTorch version with `python` and returns its medians (ms): upload, letterbox, crops, total.
#[cfg(feature = "cuda")]
fn run_torch(
    python: &Path,
    width: u32,
    height: u32,
    format: PixelFormat,
    frames: usize,
    crop: usize,
) -> Result<serde_json::Value> {
    let script = std::env::temp_dir().join(format!("deepgate-bench-torch-{}.py", std::process::id()));
    std::fs::write(&script, TORCH_SCRIPT)?;
    let output = std::process::Command::new(python)
        .arg(&script)
        .args([width.to_string(), height.to_string(), format.name().into(), frames.to_string()])
        .args([FACES.to_string(), QUALITY_CROP.to_string(), crop.to_string()])
        .output()
        .with_context(|| format!("starting {}", python.display()));
    let _ = std::fs::remove_file(&script);
    let output = output?;
    if !output.status.success() {
        bail!("the PyTorch bench failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("the PyTorch bench's output is not JSON")
}
