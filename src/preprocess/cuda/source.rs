//! The kernels' CUDA C source as NVRTC compiles it: the prelude (CUDA names for the `DG_*` macros), the shared
//! device code and the kernels, from `kernels/` (`include_str!`), in one translation unit; and the key that
//! names a compiled result in the on-disk cache.

use sha2::{Digest, Sha256};

/// The CUDA prelude, shared device code, and the two kernels.
pub const PRELUDE: &str = include_str!("kernels/prelude_cuda.cuh");
pub const WARP: &str = include_str!("kernels/warp.cuh");
pub const LETTERBOX: &str = include_str!("kernels/letterbox.cu");
pub const CROPS: &str = include_str!("kernels/crops.cu");

/// The kernels' entry points, as `extern "C"` names in the compiled module.
pub const LETTERBOX_KERNEL: &str = "dg_letterbox";
pub const CROPS_KERNEL: &str = "dg_crops";

/// NVRTC options besides the architecture. `--fmad=false`: no fused multiply-add, so every product and sum
/// rounds as the CPU reference's do (see warp.cuh).
pub const OPTIONS: [&str; 2] = ["--fmad=false", "--std=c++14"];

/// The whole translation unit NVRTC compiles.
pub fn program() -> String {
    [PRELUDE, WARP, LETTERBOX, CROPS].join("\n")
}

/// The cache key of a compiled module: the source and options, the architecture (e.g. `sm_87`) and the NVRTC
/// version that compiled it. Any change to one of them compiles afresh.
pub fn cache_key(arch: &str, nvrtc_version: (i32, i32)) -> String {
    let mut hash = Sha256::new();
    hash.update(program().as_bytes());
    for option in OPTIONS {
        hash.update([0]);
        hash.update(option.as_bytes());
    }
    let digest = hash.finalize();
    let short = crate::hex::to_hex(&digest[..8]);
    format!("kernels-{short}-{arch}-nvrtc{}.{}", nvrtc_version.0, nvrtc_version.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_holds_both_kernels_once_with_c_linkage() {
        let program = program();
        for kernel in [LETTERBOX_KERNEL, CROPS_KERNEL] {
            assert_eq!(program.matches(&format!("void {kernel}(")).count(), 1, "{kernel}");
        }
        assert_eq!(program.matches("DG_EXTERN_C DG_GLOBAL").count(), 2);
        assert!(program.starts_with(PRELUDE));
    }

    #[test]
    fn the_cache_key_changes_with_architecture_and_nvrtc_version() {
        let key = cache_key("sm_87", (12, 2));
        assert!(key.starts_with("kernels-") && key.ends_with("-sm_87-nvrtc12.2"), "{key}");
        assert_ne!(key, cache_key("sm_90", (12, 2)));
        assert_ne!(key, cache_key("sm_87", (13, 0)));
        assert_eq!(key, cache_key("sm_87", (12, 2)));
    }
}
