//! The board config's `[runtime]` section: where the pixel work and each model's inference run, the GPU path's
//! options, the frame budget that decides `overloaded`, and what a model failing its checks at start does.
//!
//! A module of its own because its keys belong to three lower modules at once (`preprocess::Backend`,
//! `infer::Placement`, `health::OverloadPolicy`) and the one check that spans them (a model on the GPU needs a
//! backend that may use it) needs all three, while its users (`pipeline`, `supervisor`) sit above `config`.
//! Like every section it is parsed strictly and validated here; `config` only aggregates it. Each user gets its
//! own options from it (`cuda_options`, `overload_policy`), as `capture::v4l2::section` hands out `V4l2Settings`.

use crate::health::OverloadPolicy;
use crate::infer::Placement;
use crate::preprocess::cuda::CudaOptions;
use crate::preprocess::Backend;
use crate::settings::in_range;
use anyhow::{ensure, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Where the pixel work runs; see `Backend`.
    pub backend: Backend,
    /// Where the detector's and the classifier's inference run (`cpu` if absent). `cuda` needs a `backend`
    /// that may use the GPU. Choose per model with `deepgate bench-gpu` on the board: small models can be
    /// slower on the GPU than on the CPU (launches, CPU islands such as BlazeFace's MaxPool).
    #[serde(default)]
    pub detector_inference: Placement,
    #[serde(default)]
    pub classifier_inference: Placement,
    /// GPU path: read frames from mapped pinned host memory instead of copying them to the device. For Tegra
    /// boards, whose GPU shares the board's memory; off by default.
    #[serde(default)]
    pub zero_copy: bool,
    /// GPU path: where compiled kernels are kept between runs (default: systemd's cache directory, else
    /// `$XDG_CACHE_HOME/deepgate/kernels`, else `~/.cache/deepgate/kernels`).
    #[serde(default)]
    pub kernel_cache: Option<PathBuf>,
    /// A frame taking longer than this, capture to decision, is slow; `overload_frames` slow frames in a row
    /// make the runtime `overloaded` (the controller is told), as many fast ones in a row end it.
    pub frame_budget_ms: f32,
    pub overload_frames: u32,
    /// When a model fails its checks at start: 0 ends `deepgate run` (status 2); N > 0 keeps the runtime up
    /// in the `model_invalid` state, the door in its fault state and the controller told, and tries to load
    /// the models again every N seconds (a fixed model deployed is picked up).
    pub model_retry_s: u32,
    /// Threads that judge frames: 1 (each frame start to finish, the default) or 2 (frame pipelining: the
    /// crops, quality and classifier of frame n on a second thread while this one detects frame n + 1; each
    /// frame's results come one frame later, in order, the same as with 1). 2 needs the classifier's inference
    /// on the CPU and `[detector] redetect_every = 1`. Measured in BENCHMARKS.md before a board ships it.
    #[serde(default = "one_thread")]
    pub threads: usize,
}

fn one_thread() -> usize {
    1
}

impl RuntimeSection {
    /// Refuses runtime settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        in_range("runtime.frame_budget_ms", self.frame_budget_ms, 1.0, 60_000.0)?;
        ensure!((1..=1000).contains(&self.overload_frames), "runtime.overload_frames must be 1 to 1000");
        ensure!(self.model_retry_s <= 3600, "runtime.model_retry_s must be 0 (exit) to 3600 seconds");
        ensure!((1..=2).contains(&self.threads), "runtime.threads must be 1 or 2");
        ensure!(
            self.threads == 1 || self.classifier_inference == Placement::Cpu,
            "runtime.threads = 2 needs runtime.classifier_inference = \"cpu\": the second thread runs the \
             classifier, and the GPU's inference stays on the thread that opened it"
        );
        for (key, placement) in [
            ("detector_inference", self.detector_inference),
            ("classifier_inference", self.classifier_inference),
        ] {
            ensure!(
                placement == Placement::Cpu || self.backend != Backend::Cpu,
                "runtime.{key} = \"cuda\" needs backend \"auto\" or \"cuda\": backend \"cpu\" never touches the GPU"
            );
        }
        Ok(())
    }

    /// The GPU path's options (`preprocess::cuda::open`), the kernel cache resolved by `resolve` (the board
    /// config's path resolution).
    pub fn cuda_options(&self, resolve: impl Fn(&Path) -> PathBuf) -> CudaOptions {
        CudaOptions {
            backend: self.backend,
            zero_copy: self.zero_copy,
            kernel_cache: self.kernel_cache.as_deref().map(resolve),
        }
    }

    /// When the frame loop is `overloaded` (`health::Monitor`).
    pub fn overload_policy(&self) -> OverloadPolicy {
        OverloadPolicy { budget_ms: self.frame_budget_ms, window: self.overload_frames }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section as board/host.toml writes it, with `extra` keys added.
    fn parse(extra: &str) -> Result<RuntimeSection> {
        let text = format!(
            "backend = \"cpu\"\nframe_budget_ms = 500.0\noverload_frames = 10\nmodel_retry_s = 0\n{extra}"
        );
        let section: RuntimeSection = toml::from_str(&text)?;
        section.validate()?;
        Ok(section)
    }

    fn error_of(extra: &str) -> String {
        format!("{:#}", parse(extra).expect_err("refused"))
    }

    #[test]
    fn the_host_section_parses_with_the_defaults() {
        let section = parse("").expect("valid");
        assert_eq!(
            (section.detector_inference, section.classifier_inference),
            (Placement::Cpu, Placement::Cpu)
        );
        assert!(!section.zero_copy && section.kernel_cache.is_none());
        assert_eq!(section.threads, 1, "one thread unless a board asks for two");
        let policy = section.overload_policy();
        assert_eq!((policy.budget_ms, policy.window), (500.0, 10));
    }

    #[test]
    fn unknown_keys_and_a_gpu_model_on_the_cpu_backend_are_refused_naming_the_key() {
        assert!(error_of("exposure = 3").contains("exposure"));
        assert!(error_of("detector_inference = \"cuda\"").contains("runtime.detector_inference"));
        assert!(error_of("classifier_inference = \"cuda\"").contains("runtime.classifier_inference"));
        assert!(error_of("classifier_inference = \"gpu\"").contains("gpu"));
        assert_eq!(parse("threads = 2").expect("two threads").threads, 2);
        assert!(error_of("threads = 0").contains("runtime.threads must be 1 or 2"));
        assert!(error_of("threads = 3").contains("runtime.threads must be 1 or 2"));
    }

    #[test]
    fn two_threads_with_the_classifier_on_the_gpu_are_refused_naming_both_keys() {
        let text = "backend = \"auto\"\nframe_budget_ms = 500.0\noverload_frames = 10\nmodel_retry_s = 0\n\
                    classifier_inference = \"cuda\"\nthreads = 2";
        let section: RuntimeSection = toml::from_str(text).expect("parses");
        let error = format!("{:#}", section.validate().expect_err("refused"));
        assert!(
            error.contains("runtime.threads") && error.contains("runtime.classifier_inference"),
            "{error}"
        );
    }

    #[test]
    fn the_gpu_path_options_carry_the_keys_with_the_cache_resolved() {
        let text =
            "backend = \"auto\"\nzero_copy = true\nkernel_cache = \"cache\"\nframe_budget_ms = 500.0\n\
                    overload_frames = 10\nmodel_retry_s = 0\nclassifier_inference = \"cuda\"";
        let section: RuntimeSection = toml::from_str(text).expect("parses");
        section.validate().expect("a GPU model with backend auto is valid");
        let options = section.cuda_options(|path| Path::new("/etc/deepgate").join(path));
        assert_eq!(options.backend, Backend::Auto);
        assert!(options.zero_copy);
        assert_eq!(options.kernel_cache, Some(PathBuf::from("/etc/deepgate/cache")));
    }
}
