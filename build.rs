//! Builds the CUDA kernels' source for the host with the C++ compiler (over `kernels/host_shim.h`), so that
//! the unit tests can check the kernels' logic against the CPU reference on any machine. Only when building
//! for the machine itself: a cross build (the Jetson's) has no use for it and may have no C++ cross compiler.
//! Nothing of it reaches the runtime, which compiles the same source with NVRTC for the GPU.

fn main() {
    git_commit();
    println!("cargo::rustc-check-cfg=cfg(deepgate_host_kernels)");
    let kernels = "src/preprocess/cuda/kernels";
    for file in ["host.cpp", "host_shim.h", "warp.cuh", "letterbox.cu", "crops.cu"] {
        println!("cargo::rerun-if-changed={kernels}/{file}");
    }
    if std::env::var("TARGET").ok() != std::env::var("HOST").ok() {
        return;
    }
    cc::Build::new()
        .cpp(true)
        .file(format!("{kernels}/host.cpp"))
        .flag_if_supported("-std=c++17")
        // The kernels' arithmetic must round as the reference's: no fused multiply-add, no fast-math.
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-fno-fast-math")
        // Plain C++ without its library: no libstdc++ for the test binaries to link.
        .flag_if_supported("-fno-exceptions")
        .flag_if_supported("-fno-rtti")
        .cpp_link_stdlib(None)
        .warnings(true)
        .compile("deepgate_host_kernels");
    println!("cargo::rustc-cfg=deepgate_host_kernels");
}

/// `DEEPGATE_GIT_COMMIT` for the start-up log line and the metrics' build info (`src/logs.rs`): the value xtask
/// (or a packager) sets, else `git rev-parse` on this checkout, else "unknown". Fail-safe: a source tarball with
/// no `.git` and no git still builds.
fn git_commit() {
    println!("cargo::rerun-if-env-changed=DEEPGATE_GIT_COMMIT");
    let commit =
        std::env::var("DEEPGATE_GIT_COMMIT").ok().filter(|commit| !commit.is_empty()).or_else(|| {
            // A new commit moves HEAD or the branch it names: rebuild the line then, and only then.
            let head = std::path::Path::new(".git/HEAD");
            if let Ok(text) = std::fs::read_to_string(head) {
                println!("cargo::rerun-if-changed=.git/HEAD");
                // Only a file that exists: a missing one (a packed ref) would make cargo run this script, and so
                // rebuild the host kernels, on every build.
                if let Some(reference) = text.trim().strip_prefix("ref: ") {
                    if std::path::Path::new(".git").join(reference).is_file() {
                        println!("cargo::rerun-if-changed=.git/{reference}");
                    }
                }
            }
            let output =
                std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
            let commit = String::from_utf8(output.stdout).ok()?.trim().to_string();
            (output.status.success() && !commit.is_empty()).then_some(commit)
        });
    println!("cargo::rustc-env=DEEPGATE_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
