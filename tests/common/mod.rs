//! Shared set-up for the integration tests: temporary directories and board configs built from the real
//! `board/host.toml`, with the test classifiers of tests/fixtures/models added to a copy of the manifest.
#![allow(dead_code)]

pub mod skip;

#[allow(unused_imports)]
pub use skip::{skip, Need};

pub use deepgate::testing::BoardVariant;
use std::path::{Path, PathBuf};

/// The source tree: where it was built, or `DEEPGATE_SOURCE_ROOT` for test binaries carried to another machine
/// (`cargo xtask gpu-check`).
pub fn root() -> PathBuf {
    std::env::var_os("DEEPGATE_SOURCE_ROOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The `deepgate` binary built with these tests, or `DEEPGATE_BIN` (as `root`).
pub fn exe() -> PathBuf {
    std::env::var_os("DEEPGATE_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_deepgate")), PathBuf::from)
}

/// Runs `deepgate` with `arguments` in the source tree (warnings and errors logged) and waits for it.
pub fn deepgate(arguments: &[&str]) -> std::process::Output {
    std::process::Command::new(exe())
        .args(arguments)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the deepgate binary runs")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// A fresh, empty directory for one test: the library's one scratch-directory helper.
pub fn temp_dir(name: &str) -> PathBuf {
    deepgate::testing::scratch_dir(name)
}

/// A models directory holding the shipped models and manifest plus the test classifiers.
pub fn models_with_test_classifiers() -> PathBuf {
    let directory = temp_dir("models");
    let shipped = root().join("models");
    for entry in std::fs::read_dir(&shipped).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), directory.join(entry.file_name())).unwrap();
        }
    }
    let tests = fixture("models");
    for name in ["stand_in_softmax.onnx", "nan_output.onnx", "wrong_shape.onnx"] {
        std::fs::copy(tests.join(name), directory.join(name)).unwrap();
    }
    let mut manifest = std::fs::read_to_string(shipped.join("manifest.toml")).unwrap();
    manifest.push_str(&std::fs::read_to_string(tests.join("classifiers.toml")).unwrap());
    std::fs::write(directory.join("manifest.toml"), manifest).unwrap();
    directory
}

/// Writes a board config derived from board/host.toml into a fresh models directory (the shipped models and
/// manifest plus the test classifiers, `models_with_test_classifiers`), its paths made absolute: `classifier`
/// selects a test classifier instead of the shipped one (None: as shipped), `paths` replaces the replay
/// inputs, and each (key path, TOML value) in `settings` sets one key, e.g. `("source.frame_rate", "5.0")` or
/// a whole section, `("gate", "{ kind = \"tcp\", ... }")` (`deepgate::testing::BoardVariant::set`).
pub fn board(classifier: Option<&str>, paths: &[&Path], settings: &[(&str, &str)]) -> PathBuf {
    board_variant(classifier, paths, |variant| {
        for (key, value) in settings {
            variant.set(key, value);
        }
    })
}

/// As `board`, with the changes `edit` makes to the variant (keys removed, values made in Rust).
pub fn board_variant(
    classifier: Option<&str>,
    paths: &[&Path],
    edit: impl FnOnce(&mut BoardVariant),
) -> PathBuf {
    let models = models_with_test_classifiers();
    let mut variant = BoardVariant::load(&root().join("board/host.toml"));
    variant.set_value("models.manifest", text(&models.join("manifest.toml")));
    variant.set_value("models.alignment", text(&models.join("alignment.toml")));
    if let Some(classifier) = classifier {
        variant.set_value("models.classifier", classifier);
    }
    // The replay inputs, host.toml's relative to its directory.
    let inputs: Vec<PathBuf> = if paths.is_empty() {
        let host =
            variant.get("source.paths").and_then(toml_edit::Value::as_array).expect("host.toml replays");
        let absolute = |path: &str| match path.strip_prefix("../") {
            Some(from_root) => root().join(from_root),
            None => root().join("board").join(path),
        };
        host.iter().filter_map(toml_edit::Value::as_str).map(absolute).collect()
    } else {
        paths.iter().map(|path| path.to_path_buf()).collect()
    };
    let inputs: toml_edit::Array = inputs.iter().map(|path| text(path)).collect();
    variant.set_value("source.paths", inputs);
    edit(&mut variant);
    let path = models.join("board.toml");
    variant.write(&path);
    path
}

/// A path as a board config writes it.
pub fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Intersection over union of two [x, y, w, h] boxes.
pub fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let left = a[0].max(b[0]);
    let top = a[1].max(b[1]);
    let right = (a[0] + a[2]).min(b[0] + b[2]);
    let bottom = (a[1] + a[3]).min(b[1] + b[3]);
    let intersection = (right - left).max(0.0) * (bottom - top).max(0.0);
    intersection / (a[2] * a[3] + b[2] * b[3] - intersection)
}

/// Writes `frames` (tight RGB, all `width`×`height`) as a YUV4MPEG2 4:2:0 video, BT.601 limited range, the way
/// `ffmpeg -f yuv4mpegpipe` writes it.
pub fn write_y4m(path: &Path, width: u32, height: u32, frames: &[Vec<u8>]) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg").unwrap();
    for rgb in frames {
        let planes = deepgate::capture::synthetic::yuv420_planes(rgb, width as usize, height as usize);
        out.write_all(b"FRAME\n").unwrap();
        out.write_all(&planes).unwrap();
    }
}

/// A short video of a photo drifting sideways by `step` pixels a frame, cropped to `width`×`height`.
pub fn drifting_video(path: &Path, photo: &str, width: u32, height: u32, frames: u32, step: u32) {
    let image = image::open(fixture(photo)).unwrap().to_rgb8();
    let frames: Vec<Vec<u8>> = (0..frames)
        .map(|index| image::imageops::crop_imm(&image, index * step, 0, width, height).to_image().into_raw())
        .collect();
    write_y4m(path, width, height, &frames);
}

/// The side of a shipped classifier's square input, from models/manifest.toml (NCHW or NHWC).
pub fn classifier_input_side(id: &str) -> u32 {
    let manifest = deepgate::manifest::Manifest::load(&root().join("models/manifest.toml")).unwrap();
    let entry = manifest.get(id, deepgate::manifest::Role::Classifier).unwrap();
    let [_, a, b, c] = entry.input.shape;
    // NCHW: [1, 3, H, W]; NHWC: [1, H, W, 3].
    (if a == 3 { b.max(c) } else { a.max(b) }) as u32
}
