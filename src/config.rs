//! The board config: one TOML file per board (`board/*.toml`), parsed strictly (an unknown key is an error)
//! and validated with messages that name the key. Relative paths are relative to the config file.
//!
//! An aggregator, in the hubris manner: each module defines its own section type (`deny_unknown_fields`) and
//! validates it (`[source]`: `capture`, its V4L2 keys `capture::v4l2::section`; `[detector]`: `detect`;
//! `[quality]`: `quality`; `[decision]`: `decide`; `[gate]`: `gate`, each gate its keys; `[relay]`:
//! `gate::relay`). This file reads the file (with `inherit`), owns the sections no lower module does
//! (`[board]`, `[models]`, `[runtime]`, `[audit]`), and checks what spans sections.

use crate::capture::SourceSection;
use crate::decide::DecisionSettings;
use crate::detect::DetectorSettings;
use crate::gate::relay::RelayConfig;
use crate::gate::GateSection;
use crate::infer::Placement;
use crate::preprocess::Backend;
use crate::quality::QualitySettings;
use crate::settings::in_range;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub mod site;
pub use site::SiteFile;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    pub board: BoardSection,
    pub source: SourceSection,
    pub models: ModelsSection,
    pub detector: DetectorSettings,
    pub quality: QualitySettings,
    pub decision: DecisionSettings,
    pub gate: GateSection,
    pub runtime: RuntimeSection,
    /// Decision receipts (hash-chained audit log); absent: none are kept.
    #[serde(default)]
    pub audit: Option<AuditSection>,
    /// The door relay on a GPIO line (`gate::relay`), next to the `[gate]` report; absent: no relay.
    #[serde(default)]
    pub relay: Option<RelayConfig>,
    /// The Prometheus endpoint (`metrics`); absent: none is served.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// The directory relative paths are resolved against (the config file's); not a key.
    #[serde(skip)]
    pub directory: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSection {
    /// Identifies the board in verdicts, logs and audit receipts.
    pub id: String,
    pub description: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    pub manifest: PathBuf,
    pub alignment: PathBuf,
    /// Model id of the face detector in the manifest.
    pub detector: String,
    /// Model id of the genuine-vs-fake classifier; absent until one ships (verdicts are then `uncertain`).
    pub classifier: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address and port of the Prometheus text endpoint (`GET /metrics`), e.g. "127.0.0.1:9464".
    pub listen: String,
}

impl MetricsSection {
    /// The address to listen on, or why `metrics.listen` is not one.
    pub fn address(&self) -> Result<std::net::SocketAddr> {
        self.listen.parse().with_context(|| {
            format!(
                "metrics.listen `{}` must be an IP address and port, e.g. \"127.0.0.1:9464\"",
                self.listen
            )
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The audit log file (JSON lines, hash-chained); created if missing, verified before appending.
    pub path: PathBuf,
    /// Optional device key (`deepgate audit keygen`): every receipt is then signed with it.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

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
}

impl RuntimeSection {
    /// Refuses runtime settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        in_range("runtime.frame_budget_ms", self.frame_budget_ms, 1.0, 60_000.0)?;
        ensure!((1..=1000).contains(&self.overload_frames), "runtime.overload_frames must be 1 to 1000");
        ensure!(self.model_retry_s <= 3600, "runtime.model_retry_s must be 0 (exit) to 3600 seconds");
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
}

/// Largest config file accepted: a board config is a page of text, anything bigger is a mistake or hostile.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

impl BoardConfig {
    pub fn load(path: &Path) -> Result<BoardConfig> {
        let table = load_table(path, 0)?;
        let mut config: BoardConfig =
            table.try_into().with_context(|| format!("board config {}: parsing", path.display()))?;
        config.validate().with_context(|| format!("board config {}", path.display()))?;
        config.directory = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// Parses and validates config text (relative paths stay relative to the current directory).
    pub fn parse(text: &str) -> Result<BoardConfig> {
        let config: BoardConfig = toml::from_str(text).context("parsing")?;
        config.validate()?;
        Ok(config)
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            tidy(&self.directory.join(path))
        }
    }

    fn validate(&self) -> Result<()> {
        let board = &self.board;
        ensure!(
            !board.id.is_empty()
                && board.id.len() <= 64
                && board.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "board.id `{}` must be 1 to 64 letters, digits, '-' or '_'",
            board.id
        );
        self.source.validate()?;
        self.detector.validate()?;
        self.quality.validate()?;
        self.decision.validate()?;
        self.gate.validate()?;
        self.runtime.validate()?;
        if let Some(relay) = &self.relay {
            relay.validate()?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.address()?;
        }
        if let Some(classifier) = &self.models.classifier {
            ensure!(!classifier.is_empty(), "models.classifier must be a model id (omit the key for none)");
        }
        Ok(())
    }
}

/// Longest chain of `inherit`s followed; longer is a mistake or a cycle.
const MAX_INHERIT_DEPTH: usize = 4;

/// Reads a board config file as a TOML table, with the file it `inherit`s (if any) underneath: the hubris
/// pattern, so that a board variant states only what differs. The parent must sit in the same directory (a
/// bare file name), so that relative paths in either mean the same thing.
fn load_table(path: &Path, depth: usize) -> Result<toml::Table> {
    ensure!(
        depth <= MAX_INHERIT_DEPTH,
        "board config {}: `inherit` chain longer than {MAX_INHERIT_DEPTH} (a cycle?)",
        path.display()
    );
    let size =
        std::fs::metadata(path).with_context(|| format!("reading board config {}", path.display()))?.len();
    ensure!(
        size <= MAX_CONFIG_BYTES,
        "board config {} is {size} bytes; the limit is {MAX_CONFIG_BYTES}",
        path.display()
    );
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading board config {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("board config {}: parsing", path.display()))?;
    let Some(parent) = table.remove("inherit") else { return Ok(table) };
    let Some(parent) = parent.as_str() else {
        bail!("board config {}: `inherit` must be a file name", path.display());
    };
    ensure!(
        !parent.is_empty() && !parent.contains(['/', '\\']) && parent != "..",
        "board config {}: `inherit = \"{parent}\"` must name a file in the same directory",
        path.display()
    );
    let parent_path = path.parent().unwrap_or(Path::new(".")).join(parent);
    let mut base = load_table(&parent_path, depth + 1)
        .with_context(|| format!("board config {} inherits {}", path.display(), parent_path.display()))?;
    overlay(&mut base, table);
    Ok(base)
}

/// Lays `top` over `base`: tables merge key by key, anything else replaces. A tagged section (one with a
/// `kind`) whose kind changes is replaced whole, since the other kind's keys would be unknown to it.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above))
                if below.get("kind").is_none()
                    || above.get("kind").is_none()
                    || below.get("kind") == above.get("kind") =>
            {
                overlay(below, above);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Removes `.` and `dir/..` pairs from a path without touching the file system, so that reports name
/// `tests/fixtures/a.jpg` rather than `board/../tests/fixtures/a.jpg`. A leading `..` is kept.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<Component> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        PathBuf::from(".")
    } else {
        parts.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The development board's config, the one users start from.
    fn host_text() -> String {
        std::fs::read_to_string("board/host.toml").expect("board/host.toml is read from the crate root")
    }

    /// host.toml with `old` (which must occur exactly once) replaced by `new`.
    fn host_with(old: &str, new: &str) -> String {
        let text = host_text();
        assert_eq!(text.matches(old).count(), 1, "`{old}` must occur once in board/host.toml");
        text.replacen(old, new, 1)
    }

    /// The full error chain of parsing `text`, which must fail.
    fn error_of(text: &str) -> String {
        match BoardConfig::parse(text) {
            Ok(_) => panic!("config was accepted"),
            Err(error) => format!("{error:#}"),
        }
    }

    fn assert_rejected_naming(text: &str, key: &str) {
        let message = error_of(text);
        assert!(message.contains(key), "error does not name `{key}`: {message}");
    }

    /// A scratch file path unique to this test process and `name`.
    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("deepgate-config-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn host_config_parses() {
        let config = BoardConfig::parse(&host_text()).expect("board/host.toml is valid");
        assert_eq!(config.board.id, "host");
        let SourceSection::Replay { paths, repeat, frame_rate } = &config.source else {
            panic!("host.toml replays: {:?}", config.source)
        };
        assert_eq!(paths.len(), 2);
        assert!(!repeat);
        assert_eq!(*frame_rate, 0.0);
        assert!(matches!(config.gate, GateSection::Stdout));
        assert_eq!(config.runtime.backend, Backend::Cpu);
        assert_eq!(
            (config.runtime.detector_inference, config.runtime.classifier_inference),
            (Placement::Cpu, Placement::Cpu),
            "inference on the CPU when the keys are absent"
        );
        assert_eq!(config.models.classifier.as_deref(), Some("deepgate_student"));
        assert_eq!((config.decision.min_frames, config.decision.max_frames), (1, 30));
        assert_eq!(config.detector.score_threshold, 0.75);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        assert_rejected_naming(&format!("colour = \"red\"\n{}", host_text()), "colour");
        assert_rejected_naming(&host_with("[decision]", "[decision]\nsmoothing = 0.5"), "smoothing");
        assert_rejected_naming(&host_with("kind = \"replay\"", "kind = \"replay\"\nloop = true"), "loop");
        assert_rejected_naming(&format!("{}\n[extra]\nanswer = 42\n", host_text()), "extra");
    }

    #[test]
    fn missing_keys_are_errors_naming_the_key() {
        assert_rejected_naming(&host_with("lost_frames = 5", ""), "lost_frames");
        assert_rejected_naming(&host_with("score_threshold = 0.75", ""), "score_threshold");
        assert_rejected_naming(&host_with("backend = \"cpu\"", ""), "backend");
        assert_rejected_naming(&host_with("model_retry_s = 0 ", ""), "model_retry_s");
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_key() {
        let cases = [
            ("score_threshold = 0.75", "score_threshold = 0.0", "detector.score_threshold"),
            ("max_false_accept = 0.01", "max_false_accept = 0.9", "decision.max_false_accept"),
            ("min_frames = 1", "min_frames = 31", "decision.max_frames"),
            ("lost_frames = 5", "lost_frames = 0", "decision.lost_frames"),
            ("frame_budget_ms = 500.0", "frame_budget_ms = 0.0", "runtime.frame_budget_ms"),
            ("overload_frames = 10", "overload_frames = 0", "runtime.overload_frames"),
            ("model_retry_s = 0 ", "model_retry_s = 99999 ", "runtime.model_retry_s"),
            (
                "backend = \"cpu\"",
                "backend = \"cpu\"\ndetector_inference = \"cuda\"",
                "runtime.detector_inference",
            ),
            (
                "backend = \"cpu\"",
                "backend = \"cpu\"\nclassifier_inference = \"cuda\"",
                "runtime.classifier_inference",
            ),
            (
                "backend = \"cpu\"",
                "backend = \"auto\"\nclassifier_inference = \"gpu\"",
                "classifier_inference",
            ),
            ("frame_rate = 0.0", "frame_rate = -1.0", "source.frame_rate"),
            ("frame_rate = 0.0", "frame_rate = nan", "source.frame_rate"),
            ("frame_rate = 0.0", "frame_rate = inf", "source.frame_rate"),
            ("max_yaw = 0.35", "max_yaw = nan", "quality.max_yaw"),
            ("id = \"host\"", "id = \"front door\"", "board.id"),
            ("id = \"host\"", "id = \"\"", "board.id"),
            (
                "kind = \"stdout\"",
                "kind = \"tcp\"\naddress = \"controller.local\"\nqueue = 16\nspool = \"gate.spool\"\ninsecure = true",
                "gate.address",
            ),
            (
                "kind = \"stdout\"",
                "kind = \"tcp\"\naddress = \":9000\"\nqueue = 16\nspool = \"gate.spool\"\ninsecure = true",
                "gate.address",
            ),
            (
                "kind = \"stdout\"",
                "kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 0\nspool = \"gate.spool\"\ninsecure = true",
                "gate.queue",
            ),
            (
                "kind = \"stdout\"",
                "kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 4097\nspool = \"gate.spool\"\ninsecure = true",
                "gate.queue",
            ),
            (
                "kind = \"stdout\"",
                "kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 16\nspool = \"\"\ninsecure = true",
                "gate.spool",
            ),
            (
                "kind = \"stdout\"",
                "kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 16\nspool = \"/var/lib/\"\ninsecure = true",
                "gate.spool",
            ),
        ];
        for (old, new, key) in cases {
            assert_rejected_naming(&host_with(old, new), key);
        }
    }

    #[test]
    fn a_valid_tcp_gate_is_accepted() {
        let text = host_with(
            "kind = \"stdout\"",
            "kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 16\nspool = \"../var/gate.spool\"\ninsecure = true",
        );
        let mut config =
            BoardConfig::parse(&text).expect("a tcp gate with host:port, a queue and a spool is valid");
        config.directory = PathBuf::from("/etc/deepgate/board");
        let GateSection::Tcp(tcp) = &config.gate else { panic!("gate is {:?}", config.gate) };
        assert_eq!((tcp.address.as_str(), tcp.queue), ("controller.local:9000", 16));
        assert_eq!(config.resolve(&tcp.spool), PathBuf::from("/etc/deepgate/var/gate.spool"));
    }

    #[test]
    fn the_tcp_link_is_tls_unless_insecure_is_said_and_never_both() {
        let gate = |rest: &str| {
            host_with(
                "kind = \"stdout\"",
                &format!("kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 16\nspool = \"g.spool\"\n{rest}"),
            )
        };
        let tls = "certificate = \"device.crt\"\nprivate_key = \"device.key\"\ncontroller_ca = \"ca.crt\"\n\
                   controller_name = \"controller.local\"\nsigning_key = \"signing.key\"";
        let config = BoardConfig::parse(&gate(&format!("insecure = false\n{tls}"))).expect("TLS is valid");
        let GateSection::Tcp(tcp) = &config.gate else { panic!("gate is {:?}", config.gate) };
        let settings = tcp.tls(|path| config.resolve(path)).expect("TLS settings");
        assert_eq!(settings.controller_name, "controller.local");
        assert_rejected_naming(&gate(tls), "insecure");
        assert_rejected_naming(&gate("insecure = false"), "gate.certificate is missing");
        assert_rejected_naming(
            &gate(&format!(
                "insecure = false\n{}",
                tls.replace("controller_name = \"controller.local\"", "")
            )),
            "gate.controller_name is missing",
        );
        assert_rejected_naming(
            &gate(&format!("insecure = true\n{}", tls.replace("\nsigning_key = \"signing.key\"", ""))),
            "gate.insecure = true sends plaintext",
        );
        // Every verdict line is signed unless the link is a lab's; the maximum age is bounded.
        assert_rejected_naming(
            &gate(&format!("insecure = false\n{}", tls.replace("signing_key = \"signing.key\"", ""))),
            "gate.signing_key is missing",
        );
        BoardConfig::parse(&gate("insecure = true\nsigning_key = \"signing.key\"")).expect("signed in a lab");
        for bad in ["max_age_ms = 0", "max_age_ms = 60001"] {
            assert_rejected_naming(&gate(&format!("insecure = false\n{tls}\n{bad}")), "gate.max_age_ms");
        }
        assert_eq!(tcp.max_age_ms, 5000, "the default");
    }

    #[test]
    fn a_tcp_gate_without_a_spool_is_refused_naming_the_key() {
        // There is no memory-only TCP gate: a spool on a RAM file system is that choice, made explicitly.
        let text = host_with(
            "kind = \"stdout\"",
            "kind = \"tcp\"\naddress = \"controller.local:9000\"\nqueue = 16\ninsecure = true",
        );
        assert_rejected_naming(&text, "spool");
    }

    #[test]
    fn resolve_joins_relative_paths_to_the_config_directory() {
        let mut config = BoardConfig::parse(&host_text()).expect("valid");
        config.directory = PathBuf::from("/etc/deepgate/board");
        // `../models/manifest.toml` from /etc/deepgate/board, with the `board/..` pair tidied away.
        assert_eq!(
            config.resolve(&config.models.manifest),
            PathBuf::from("/etc/deepgate/models/manifest.toml")
        );
        assert_eq!(
            config.resolve(Path::new("/opt/models/manifest.toml")),
            PathBuf::from("/opt/models/manifest.toml")
        );
    }

    #[test]
    fn load_resolves_against_the_file_directory() {
        let config = BoardConfig::load(Path::new("board/host.toml")).expect("board/host.toml loads");
        assert_eq!(config.directory, PathBuf::from("board"));
        let manifest = config.resolve(&config.models.manifest);
        assert!(manifest.is_file(), "{} does not exist", manifest.display());
    }

    #[test]
    fn load_refuses_a_file_over_the_size_limit() {
        // A valid config padded with comments: only its size is wrong.
        let mut text = host_text();
        while text.len() as u64 <= MAX_CONFIG_BYTES {
            text.push_str("# padding padding padding padding padding padding padding padding padding\n");
        }
        let path = scratch("large.toml");
        std::fs::write(&path, &text).expect("writing a scratch config");
        let result = BoardConfig::load(&path);
        std::fs::remove_file(&path).ok();
        let message = format!("{:#}", result.expect_err("an oversized config must be refused"));
        assert!(message.contains("limit"), "{message}");
    }

    #[test]
    fn load_names_a_missing_file() {
        let path = scratch("missing.toml");
        let message = format!("{:#}", BoardConfig::load(&path).expect_err("no such file"));
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn hostile_toml_is_an_error_not_a_crash() {
        let deep_arrays = format!("x = {}", "[".repeat(10_000));
        let closed_arrays = format!("x = {}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep_tables = format!("x = {}", "{a = ".repeat(10_000));
        let bare_brackets = "[".repeat(10_000);
        let long_header = format!("[{}]", vec!["a"; 10_000].join("."));
        let unterminated = format!("{}\nextra = \"{}", host_text(), "A".repeat(1 << 20));
        for text in [&deep_arrays, &closed_arrays, &deep_tables, &bare_brackets, &long_header, &unterminated]
        {
            assert!(BoardConfig::parse(text).is_err(), "accepted {}…", &text[..40]);
        }
    }

    #[test]
    fn resolved_paths_are_tidied_without_touching_the_file_system() {
        assert_eq!(
            super::tidy(Path::new("board/../tests/./fixtures/a.jpg")),
            PathBuf::from("tests/fixtures/a.jpg")
        );
        assert_eq!(super::tidy(Path::new("../x/../../y")), PathBuf::from("../../y"));
        assert_eq!(super::tidy(Path::new("board/..")), PathBuf::from("."));
        assert_eq!(super::tidy(Path::new("/a/b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn a_board_inherits_another_and_states_only_what_differs() {
        let directory = std::env::temp_dir().join(format!("deepgate-inherit-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("base.toml"), host_text()).unwrap();
        let child = "inherit = \"base.toml\"\n[board]\nid = \"door-2\"\n[decision]\nevidence_weight = 0.5\n\
                     [gate]\nkind = \"tcp\"\naddress = \"10.0.0.5:4000\"\nqueue = 32\nspool = \"gate.spool\"\n\
                     insecure = true\n";
        std::fs::write(directory.join("child.toml"), child).unwrap();
        let config = BoardConfig::load(&directory.join("child.toml")).unwrap();
        assert_eq!(config.board.id, "door-2");
        assert!(config.board.description.contains("Development"), "unchanged keys come from the parent");
        assert_eq!(config.decision.evidence_weight, 0.5);
        assert_eq!(config.decision.max_frames, 30, "siblings of an overridden key are kept");
        assert!(
            matches!(&config.gate, GateSection::Tcp(tcp) if tcp.queue == 32),
            "a changed kind replaces the section"
        );

        std::fs::write(
            directory.join("typo.toml"),
            "inherit = \"base.toml\"\n[decision]\nevidence_wieght = 0.5\n",
        )
        .unwrap();
        let error = format!("{:#}", BoardConfig::load(&directory.join("typo.toml")).unwrap_err());
        assert!(error.contains("evidence_wieght"), "strictness survives inheritance: {error}");

        std::fs::write(directory.join("loop.toml"), "inherit = \"loop.toml\"\n").unwrap();
        let error = format!("{:#}", BoardConfig::load(&directory.join("loop.toml")).unwrap_err());
        assert!(error.contains("cycle"), "{error}");

        std::fs::write(directory.join("away.toml"), "inherit = \"../etc/passwd\"\n").unwrap();
        let error = format!("{:#}", BoardConfig::load(&directory.join("away.toml")).unwrap_err());
        assert!(error.contains("same directory"), "{error}");
    }

    /// host.toml with its `[source]` replaced by a v4l2 source made of `keys`.
    fn v4l2_config(keys: &str) -> String {
        let text = host_text();
        let start = text.find("[source]").unwrap();
        let end = text.find("[models]").unwrap();
        format!("{}[source]\nkind = \"v4l2\"\n{keys}\n{}", &text[..start], &text[end..])
    }

    const V4L2_KEYS: &str = "device = \"/dev/video0\"\nformat = \"YUYV\"\nwidth = 640\nheight = 480\n\
                             frame_rate = 30.0\nbuffers = 4\nallow_virtual = false";

    #[test]
    fn a_v4l2_source_parses_with_its_pins() {
        let text = v4l2_config(&format!(
            "{V4L2_KEYS}\ndriver = \"uvcvideo\"\ncard = \"HD Webcam\"\nbus_info = \"usb-1\"\nmin_frame_rate = 15.0"
        ));
        let config = BoardConfig::parse(&text).expect("valid");
        let settings = config.source.v4l2().expect("v4l2").settings().expect("valid");
        assert_eq!(settings.device.as_deref(), Some(Path::new("/dev/video0")));
        assert_eq!(settings.pins.driver.as_deref(), Some("uvcvideo"));
        assert_eq!(settings.pins.bus_info.as_deref(), Some("usb-1"));
        assert_eq!(settings.requested.format, crate::frame::PixelFormat::Yuyv);
        assert_eq!((settings.requested.width, settings.requested.height, settings.buffers), (640, 480, 4));
        assert_eq!((settings.frame_rate, settings.min_frame_rate), (30.0, Some(15.0)));
        assert!(!settings.allow_virtual);
        // bus_info alone (no device) is enough: the device is found by scanning.
        let scan = V4L2_KEYS.replace("device = \"/dev/video0\"", "bus_info = \"usb-1\"");
        assert!(BoardConfig::parse(&v4l2_config(&scan)).is_ok());
    }

    #[test]
    fn v4l2_keys_are_strict_and_every_value_is_checked_naming_the_key() {
        assert_rejected_naming(&v4l2_config(&format!("{V4L2_KEYS}\nexposure = 3")), "exposure");
        for key in ["format", "width", "height", "frame_rate", "buffers", "allow_virtual"] {
            let without: Vec<&str> = V4L2_KEYS.lines().filter(|line| !line.starts_with(key)).collect();
            assert_rejected_naming(&v4l2_config(&without.join("\n")), key);
        }
        let cases = [
            ("format = \"YUYV\"", "format = \"H264\"", "source.format"),
            ("width = 640", "width = 0", "source.width"),
            ("height = 480", "height = 20000", "source.height"),
            ("frame_rate = 30.0", "frame_rate = 0.0", "source.frame_rate"),
            ("frame_rate = 30.0", "frame_rate = nan", "source.frame_rate"),
            ("buffers = 4", "buffers = 1", "source.buffers"),
            ("buffers = 4", "buffers = 33", "source.buffers"),
            ("device = \"/dev/video0\"", "device = \"video0\"", "source.device"),
            ("device = \"/dev/video0\"", "device = \"/dev/video0\"\ndriver = \"\"", "source.driver"),
            (
                "device = \"/dev/video0\"",
                "device = \"/dev/video0\"\ndriver = \"a-driver-name-too-long\"",
                "source.driver",
            ),
            (
                "device = \"/dev/video0\"",
                "device = \"/dev/video0\"\nmin_frame_rate = 60.0",
                "source.min_frame_rate",
            ),
            ("device = \"/dev/video0\"", "card = \"HD Webcam\"", "source.bus_info"),
        ];
        for (old, new, key) in cases {
            assert_eq!(V4L2_KEYS.matches(old).count(), 1, "{old}");
            assert_rejected_naming(&v4l2_config(&V4L2_KEYS.replacen(old, new, 1)), key);
        }
    }
}
