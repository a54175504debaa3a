//! `deepgate probe`: what this machine offers, read from the system without touching any driver library
//! (loading libcuda to ask would itself be a risk on a broken install). `--gpu` does load it, on purpose: it
//! opens the GPU path exactly as `run` does, which is how a board is commissioned.

use anyhow::Result;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

pub fn probe(gpu: bool) -> Result<ExitCode> {
    let mut value = json!({
        "arch": std::env::consts::ARCH,
        "os": std::env::consts::OS,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu_features": cpu_features(),
        "cuda": cuda(),
        "cameras": cameras(),
        "deepgate": env!("CARGO_PKG_VERSION"),
    });
    if gpu {
        value["gpu"] = gpu_path();
        value["gpu_inference"] = match deepgate::infer::cuda_runtime() {
            Ok(_) => json!({ "usable": true, "runtime": "tract CUDA (cudart, cuBLAS, cuDNN found)" }),
            Err(error) => json!({ "usable": false, "error": format!("{error:#}") }),
        };
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

/// The GPU path opened as `run` opens it (backend "auto", the default kernel cache): the device, its
/// architecture and peak bandwidth and where the kernels came from; or why it cannot be used. (`gpu_inference`
/// beside it says whether tract's CUDA runtime finds its libraries; each model is checked when it loads.)
fn gpu_path() -> serde_json::Value {
    #[cfg(feature = "cuda")]
    {
        use deepgate::preprocess::cuda::gpu;
        match gpu::CudaKernels::open(gpu::GpuOptions { cache: gpu::default_cache(), ..Default::default() }) {
            Ok(kernels) => {
                let info = kernels.info();
                json!({
                    "usable": true,
                    "device": info.name,
                    "arch": info.arch(),
                    "memory_mib": info.memory_mib,
                    "integrated": info.integrated,
                    "driver": info.driver,
                    "nvrtc": format!("{}.{}", info.nvrtc.0, info.nvrtc.1),
                    "kernels": kernels.kernels_from(),
                    "peak_gbps": kernels.peak_bandwidth_gbps().ok(),
                })
            }
            Err(error) => json!({ "usable": false, "error": format!("{error:#}") }),
        }
    }
    #[cfg(not(feature = "cuda"))]
    json!({ "usable": false, "error": "this build has no CUDA path (built without the `cuda` feature)" })
}

fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($feature:tt),*) => { $( if std::arch::is_x86_feature_detected!($feature) { found.push($feature); } )* };
        }
        check!("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vnni");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! check {
            ($($feature:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($feature) { found.push($feature); } )* };
        }
        check!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2");
    }
    found
}

/// Library directories where a CUDA driver or toolkit is found on desktop Linux and on Jetson (L4T).
const LIBRARY_DIRECTORIES: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/tegra",
    "/usr/local/cuda/lib64",
    "/usr/lib64",
    "/usr/lib/wsl/lib",
];

fn find_library(prefix: &str) -> Option<String> {
    LIBRARY_DIRECTORIES.iter().find_map(|directory| {
        let entries = std::fs::read_dir(directory).ok()?;
        entries
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
            .map(|path| path.display().to_string())
    })
}

fn cuda() -> serde_json::Value {
    let devices: Vec<String> = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| name.starts_with("nvidia") || name == "nvhost-gpu" || name == "nvgpu")
                .map(|name| format!("/dev/{name}"))
                .collect()
        })
        .unwrap_or_default();
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|text| text.lines().next().map(str::to_string));
    let tegra = std::fs::read_to_string("/etc/nv_tegra_release")
        .ok()
        .and_then(|text| text.lines().next().map(str::to_string));
    let libcuda = find_library("libcuda.so");
    let libnvrtc = find_library("libnvrtc.so");
    json!({
        "usable": libcuda.is_some() && !devices.is_empty(),
        "libcuda": libcuda,
        "libnvrtc": libnvrtc,
        "devices": devices,
        "driver": driver,
        "tegra_release": tegra,
        "used_by_this_build": cfg!(feature = "cuda"),
    })
}

/// Every /dev/video* node: its identity as VIDIOC_QUERYCAP reports it (the values `[source]`'s `driver`,
/// `card` and `bus_info` pins take), its USB vendor, product and serial (null: not USB), whether deepgate
/// counts it as virtual, whether it is a streaming capture node, and the formats and frame sizes it offers.
/// Nodes that cannot be opened are listed with the error.
fn cameras() -> Vec<serde_json::Value> {
    use deepgate::capture::v4l2::{device::Device, enrolment, identity, negotiate};
    video_nodes_or_sysfs()
        .into_iter()
        .map(|path| {
            let device_name = path.display().to_string();
            let opened = Device::open(&path).and_then(|device| Ok((device.query_caps()?, device)));
            match opened {
                Err(error) => json!({ "device": device_name, "error": error.to_string() }),
                Ok((caps, device)) => {
                    let capture = caps.is_streaming_capture();
                    let formats: Vec<serde_json::Value> = if capture {
                        device
                            .formats()
                            .into_iter()
                            .map(|(code, description)| {
                                json!({
                                    "fourcc": negotiate::fourcc_text(code),
                                    "format": negotiate::format_of(code).map(|format| format.name()),
                                    "description": description,
                                    "sizes": device.frame_sizes(code),
                                })
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    // What `deepgate enroll` would record beside the identity: the USB ids, or null.
                    let usb = device
                        .char_device()
                        .and_then(|(major, minor)| enrolment::usb_identity(major, minor))
                        .map_or_else(|error| json!({ "error": error.to_string() }), |usb| json!(usb));
                    json!({
                        "device": device_name,
                        "driver": caps.identity.driver,
                        "card": caps.identity.card,
                        "bus_info": caps.identity.bus_info,
                        "usb": usb,
                        "virtual": identity::is_virtual(&caps.identity.driver),
                        "capture": capture,
                        "formats": formats,
                    })
                }
            }
        })
        .collect()
}

/// The /dev/video* nodes (numeric order); where /dev lists none, those sysfs knows about.
fn video_nodes_or_sysfs() -> Vec<std::path::PathBuf> {
    let nodes = deepgate::capture::v4l2::device::video_nodes();
    if !nodes.is_empty() {
        return nodes;
    }
    let Ok(entries) = std::fs::read_dir("/sys/class/video4linux") else { return Vec::new() };
    let mut nodes: Vec<std::path::PathBuf> =
        entries.flatten().map(|entry| Path::new("/dev").join(entry.file_name())).collect();
    nodes.sort();
    nodes
}
