//! The board config: one TOML file per board (`board/*.toml`), parsed strictly (an unknown key is an error)
//! and validated with messages that name the key. Relative paths are relative to the config file.
//!
//! An aggregator, in the hubris manner: each module defines its own section type (`deny_unknown_fields`) and
//! validates it (`[source]`: `capture`, its V4L2 keys `capture::v4l2::section`; `[detector]`: `detect`;
//! `[quality]`: `quality`; `[decision]`: `decide`; `[gate]`: `gate`, each gate its keys; `[relay]`:
//! `gate::relay`; `[mqtt]`: `gate::mqtt`; `[runtime]`: `runtime`). This file reads the file (with
//! `inherit`), owns the sections that describe the board as a whole (`[board]`, `[models]`, `[audit]`, `[metrics]`), and checks what spans
//! sections.

use crate::capture::SourceSection;
use crate::decide::DecisionSettings;
use crate::detect::DetectorSettings;
use crate::gate::relay::RelayConfig;
use crate::gate::GateSection;
use crate::quality::QualitySettings;
use crate::runtime::RuntimeSection;
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
    /// Fleet reporting to the site's MQTT broker (`gate::mqtt`), beside the `[gate]`; absent: none.
    #[serde(default)]
    pub mqtt: Option<crate::gate::mqtt::MqttSection>,
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
    /// The audit log file (JSON lines, hash-chained); created if missing, verified before appending (a torn
    /// last write is cut and counted; anything else that does not verify refuses the start).
    pub path: PathBuf,
    /// Optional device key (`deepgate audit keygen`): every receipt is then signed with it.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// A receipt that cannot be written (disk full, I/O error): `"fault"` (default: no verdicts until one is
    /// written again, health `audit_failed`) or `"continue"` (verdicts go on, health `audit_degraded`).
    #[serde(default)]
    pub on_failure: crate::gate::audit::OnFailure,
    /// Rotate the file at this size (bytes) to `FILE.1`, `FILE.2`...; 0: never. The chain goes on across files.
    #[serde(default = "AuditSection::default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (1 to 1000); the oldest beyond are deleted.
    #[serde(default = "AuditSection::default_keep")]
    pub keep: u32,
    /// Send the chain head (last sequence and hash) to the controller every this many seconds; 0: never.
    #[serde(default = "AuditSection::default_head_interval_s")]
    pub head_interval_s: u32,
}

impl AuditSection {
    fn default_max_bytes() -> u64 {
        64 * 1024 * 1024
    }

    fn default_keep() -> u32 {
        8
    }

    fn default_head_interval_s() -> u32 {
        60
    }

    /// Refuses audit settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.max_bytes == 0 || self.max_bytes >= 4096,
            "audit.max_bytes must be 0 (never rotate) or at least 4096 (a file holds several receipts)"
        );
        ensure!((1..=1000).contains(&self.keep), "audit.keep must be 1 to 1000 rotated files");
        ensure!(self.head_interval_s <= 86_400, "audit.head_interval_s must be 0 (never) to 86400 seconds");
        Ok(())
    }

    /// The rotation these settings ask for.
    pub fn rotation(&self) -> crate::gate::audit::Rotation {
        crate::gate::audit::Rotation { max_bytes: self.max_bytes, keep: self.keep }
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
        ensure!(
            self.runtime.threads == 1 || self.detector.redetect_every == 1,
            "runtime.threads = 2 needs detector.redetect_every = 1: a held frame's crops decide whether the \
             detector runs again, which the second thread's crops come too late for"
        );
        if let Some(relay) = &self.relay {
            relay.validate()?;
        }
        if let Some(audit) = &self.audit {
            audit.validate()?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.address()?;
        }
        if let Some(mqtt) = &self.mqtt {
            mqtt.validate()?;
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
    use crate::infer::Placement;
    use crate::preprocess::Backend;
    use crate::testing::BoardVariant;

    /// The development board's config, the one users start from.
    fn host_text() -> String {
        std::fs::read_to_string("board/host.toml").expect("board/host.toml is read from the crate root")
    }

    /// host.toml with each key path of `settings` set to its TOML value (`testing::BoardVariant`).
    fn host_with(settings: &[(&str, &str)]) -> String {
        let mut variant = BoardVariant::parse(&host_text());
        for (key, value) in settings {
            variant.set(key, value);
        }
        variant.text()
    }

    /// host.toml without `key`.
    fn host_without(key: &str) -> String {
        BoardVariant::parse(&host_text()).remove(key).text()
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

    /// A path for `name` in a fresh scratch directory.
    fn scratch(name: &str) -> PathBuf {
        crate::testing::scratch_dir("config").join(name)
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
        assert_rejected_naming(&host_with(&[("colour", "\"red\"")]), "colour");
        assert_rejected_naming(&host_with(&[("decision.smoothing", "0.5")]), "smoothing");
        assert_rejected_naming(&host_with(&[("source.loop", "true")]), "loop");
        assert_rejected_naming(&host_with(&[("extra", "{ answer = 42 }")]), "extra");
    }

    #[test]
    fn missing_keys_are_errors_naming_the_key() {
        for key in
            ["decision.lost_frames", "detector.score_threshold", "runtime.backend", "runtime.model_retry_s"]
        {
            let (_, name) = key.split_once('.').unwrap();
            assert_rejected_naming(&host_without(key), name);
        }
    }

    /// A TCP gate section with `keys` (inline-table entries) after its kind.
    fn tcp_gate(keys: &str) -> String {
        host_with(&[("gate", &format!("{{ kind = \"tcp\", {keys} }}"))])
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_key() {
        let cases: [(&[(&str, &str)], &str); 16] = [
            (&[("detector.score_threshold", "0.0")], "detector.score_threshold"),
            (&[("decision.max_false_accept", "0.9")], "decision.max_false_accept"),
            (&[("decision.min_frames", "31")], "decision.max_frames"),
            (&[("decision.lost_frames", "0")], "decision.lost_frames"),
            (&[("runtime.frame_budget_ms", "0.0")], "runtime.frame_budget_ms"),
            (&[("runtime.overload_frames", "0")], "runtime.overload_frames"),
            (&[("runtime.model_retry_s", "99999")], "runtime.model_retry_s"),
            (&[("runtime.detector_inference", "\"cuda\"")], "runtime.detector_inference"),
            (&[("runtime.classifier_inference", "\"cuda\"")], "runtime.classifier_inference"),
            (
                &[("runtime.backend", "\"auto\""), ("runtime.classifier_inference", "\"gpu\"")],
                "classifier_inference",
            ),
            (&[("source.frame_rate", "-1.0")], "source.frame_rate"),
            (&[("source.frame_rate", "nan")], "source.frame_rate"),
            (&[("source.frame_rate", "inf")], "source.frame_rate"),
            (&[("quality.max_yaw", "nan")], "quality.max_yaw"),
            (&[("board.id", "\"front door\"")], "board.id"),
            (&[("board.id", "\"\"")], "board.id"),
        ];
        for (settings, key) in cases {
            assert_rejected_naming(&host_with(settings), key);
        }
        let gates = [
            ("address = \"controller.local\", queue = 16, spool = \"gate.spool\"", "gate.address"),
            ("address = \":9000\", queue = 16, spool = \"gate.spool\"", "gate.address"),
            ("address = \"controller.local:9000\", queue = 0, spool = \"gate.spool\"", "gate.queue"),
            ("address = \"controller.local:9000\", queue = 4097, spool = \"gate.spool\"", "gate.queue"),
            ("address = \"controller.local:9000\", queue = 16, spool = \"\"", "gate.spool"),
            ("address = \"controller.local:9000\", queue = 16, spool = \"/var/lib/\"", "gate.spool"),
        ];
        for (keys, key) in gates {
            assert_rejected_naming(&tcp_gate(&format!("{keys}, insecure = true")), key);
        }
    }

    #[test]
    fn a_valid_tcp_gate_is_accepted() {
        let text = tcp_gate(
            "address = \"controller.local:9000\", queue = 16, spool = \"../var/gate.spool\", insecure = true",
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
        const TLS: [(&str, &str); 5] = [
            ("certificate", "\"device.crt\""),
            ("private_key", "\"device.key\""),
            ("controller_ca", "\"ca.crt\""),
            ("controller_name", "\"controller.local\""),
            ("signing_key", "\"signing.key\""),
        ];
        // A TCP gate with `insecure` as given (absent: None), the TLS keys but `without`, and `extra`.
        let gate = |insecure: Option<bool>, tls: bool, without: &str, extra: &[(&str, &str)]| {
            let mut variant = BoardVariant::parse(&host_text());
            variant.set(
                "gate",
                "{ kind = \"tcp\", address = \"controller.local:9000\", queue = 16, spool = \"g.spool\" }",
            );
            if let Some(insecure) = insecure {
                variant.set_value("gate.insecure", insecure);
            }
            let keys = TLS.iter().filter(|(key, _)| tls && *key != without);
            for (key, value) in keys.chain(extra) {
                variant.set(&format!("gate.{key}"), value);
            }
            variant.text()
        };
        let config = BoardConfig::parse(&gate(Some(false), true, "", &[])).expect("TLS is valid");
        let GateSection::Tcp(tcp) = &config.gate else { panic!("gate is {:?}", config.gate) };
        let settings = tcp.tls(|path| config.resolve(path)).expect("TLS settings");
        assert_eq!(settings.controller_name, "controller.local");
        assert_rejected_naming(&gate(None, true, "", &[]), "insecure");
        assert_rejected_naming(&gate(Some(false), false, "", &[]), "gate.certificate is missing");
        assert_rejected_naming(
            &gate(Some(false), true, "controller_name", &[]),
            "gate.controller_name is missing",
        );
        assert_rejected_naming(
            &gate(Some(true), true, "signing_key", &[]),
            "gate.insecure = true sends plaintext",
        );
        // Every verdict line is signed unless the link is a lab's; the maximum age is bounded.
        assert_rejected_naming(&gate(Some(false), true, "signing_key", &[]), "gate.signing_key is missing");
        BoardConfig::parse(&gate(Some(true), false, "", &[("signing_key", "\"signing.key\"")]))
            .expect("signed in a lab");
        for bad in ["0", "60001"] {
            assert_rejected_naming(&gate(Some(false), true, "", &[("max_age_ms", bad)]), "gate.max_age_ms");
        }
        assert_eq!(tcp.max_age_ms, 5000, "the default");
    }

    #[test]
    fn a_tcp_gate_without_a_spool_is_refused_naming_the_key() {
        // There is no memory-only TCP gate: a spool on a RAM file system is that choice, made explicitly.
        let text = tcp_gate("address = \"controller.local:9000\", queue = 16, insecure = true");
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
        let directory = crate::testing::scratch_dir("inherit");
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

    /// The keys of a valid V4L2 `[source]`, as TOML values.
    const V4L2_KEYS: [(&str, &str); 8] = [
        ("device", "\"/dev/video0\""),
        ("format", "\"YUYV\""),
        ("width", "640"),
        ("height", "480"),
        ("frame_rate", "30.0"),
        ("buffers", "4"),
        ("allow_virtual", "false"),
        ("enrolment", "\"/var/lib/deepgate/camera.json\""),
    ];

    /// host.toml with a V4L2 `[source]`: `V4L2_KEYS`, then `settings` set (a key path under `source`), then
    /// `without` removed.
    fn v4l2_config(settings: &[(&str, &str)], without: &[&str]) -> String {
        let mut variant = BoardVariant::parse(&host_text());
        variant.set("source", "{ kind = \"v4l2\" }");
        for (key, value) in V4L2_KEYS.iter().chain(settings) {
            variant.set(&format!("source.{key}"), value);
        }
        for key in without {
            variant.remove(&format!("source.{key}"));
        }
        variant.text()
    }

    #[test]
    fn a_v4l2_source_parses_with_its_pins() {
        let pins = [
            ("driver", "\"uvcvideo\""),
            ("card", "\"HD Webcam\""),
            ("bus_info", "\"usb-1\""),
            ("min_frame_rate", "15.0"),
        ];
        let config = BoardConfig::parse(&v4l2_config(&pins, &[])).expect("valid");
        let settings = config.source.v4l2().expect("v4l2").settings().expect("valid");
        assert_eq!(settings.device.as_deref(), Some(Path::new("/dev/video0")));
        assert_eq!(settings.pins.driver.as_deref(), Some("uvcvideo"));
        assert_eq!(settings.pins.bus_info.as_deref(), Some("usb-1"));
        assert_eq!(settings.requested.format, crate::frame::PixelFormat::Yuyv);
        assert_eq!((settings.requested.width, settings.requested.height, settings.buffers), (640, 480, 4));
        assert_eq!((settings.frame_rate, settings.min_frame_rate), (30.0, Some(15.0)));
        assert!(!settings.allow_virtual);
        // bus_info alone (no device) is enough: the device is found by scanning.
        assert!(BoardConfig::parse(&v4l2_config(&[("bus_info", "\"usb-1\"")], &["device"])).is_ok());
    }

    #[test]
    fn v4l2_keys_are_strict_and_every_value_is_checked_naming_the_key() {
        assert_rejected_naming(&v4l2_config(&[("exposure", "3")], &[]), "exposure");
        for key in ["format", "width", "height", "frame_rate", "buffers", "allow_virtual"] {
            assert_rejected_naming(&v4l2_config(&[], &[key]), key);
        }
        let cases = [
            ("format", "\"H264\"", "source.format"),
            ("width", "0", "source.width"),
            ("height", "20000", "source.height"),
            ("frame_rate", "0.0", "source.frame_rate"),
            ("frame_rate", "nan", "source.frame_rate"),
            ("buffers", "1", "source.buffers"),
            ("buffers", "33", "source.buffers"),
            ("device", "\"video0\"", "source.device"),
            ("driver", "\"\"", "source.driver"),
            ("driver", "\"a-driver-name-too-long\"", "source.driver"),
            ("min_frame_rate", "60.0", "source.min_frame_rate"),
        ];
        for (key, value, named) in cases {
            assert_rejected_naming(&v4l2_config(&[(key, value)], &[]), named);
        }
        // Pins without a device or a bus to find it by.
        assert_rejected_naming(&v4l2_config(&[("card", "\"HD Webcam\"")], &["device"]), "source.bus_info");
    }
}
