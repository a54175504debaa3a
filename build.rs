//! Builds the CUDA kernels' source for the host with the C++ compiler (over `kernels/host_shim.h`), so that
//! the unit tests can check the kernels' logic against the CPU reference on any machine. Only when building
//! for the machine itself: a cross build (the Jetson's) has no use for it and may have no C++ cross compiler.
//! Nothing of it reaches the runtime, which compiles the same source with NVRTC for the GPU.

fn main() {
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
