//! The `[mqtt]` keys (`MqttSection`), their checks, and the settings they make: the password, the TLS files
//! and the signing key read at start, so that a bad file is a start-up error naming its key.

use super::{tls, MqttSettings, DEFAULT_PREFIX};
use crate::gate::spool::MAX_CAPACITY;
use crate::gate::tcp::DEFAULT_MAX_AGE;
use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The board config's `[mqtt]` section: the site's broker, next to the `[gate]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// The broker, `host:port`; with TLS its certificate must name `host`.
    pub broker: String,
    /// The site's name, the second topic level: 1 to 64 letters, digits, '-' or '_'.
    pub site: String,
    /// The first topic level; default "deepgate".
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Verdicts kept until the broker acknowledges them, 1 to 4096; when full, the oldest is dropped.
    pub queue: usize,
    /// This output's spool file (not the `[gate]`'s), created if missing in an existing directory.
    pub spool: PathBuf,
    /// true: plaintext (a lab only); false: TLS 1.3, `ca` required.
    pub insecure: bool,
    /// The CA (PEM) that issued the broker's certificate: the only one trusted.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The device's certificate (PEM) for client authentication; with `private_key`.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The device's private key (PEM), mode 600.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The MQTT user name; with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// A file (mode 600) holding the MQTT password on its first line.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The device's Ed25519 key (as `[gate] signing_key`; the same file may serve both) that signs every
    /// verdict line; required unless `insecure = true`.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The MQTT keep-alive, 5 to 300 s; default 30. The broker publishes the last will after 1.5 times this
    /// without a word from a kiosk whose connection did not even close (a cable pulled).
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// A verdict published later than this after it was made is marked `"expired":true`, 100 to 60000 ms.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

pub(super) fn default_keep_alive_s() -> u64 {
    30
}

fn default_max_age_ms() -> u64 {
    DEFAULT_MAX_AGE.as_millis() as u64
}

/// Whether `name` may be one MQTT topic level here: no separators or wildcards, nothing to escape.
pub(super) fn topic_level(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Splits `host:port` (IPv6 bracketed), refusing anything else.
fn split_broker(broker: &str) -> Result<(String, u16)> {
    let (host, port) =
        broker.rsplit_once(':').with_context(|| format!("mqtt.broker `{broker}` must be host:port"))?;
    ensure!(!host.is_empty(), "mqtt.broker `{broker}` must be host:port: the host is missing");
    ensure!(
        !host.contains(':') || (host.starts_with('[') && host.ends_with(']')),
        "mqtt.broker `{broker}` must be host:port: write an IPv6 host in brackets, as in [::1]:8883"
    );
    let port: u16 = port.parse().ok().filter(|port| *port != 0).with_context(|| {
        format!("mqtt.broker `{broker}` must be host:port: `{port}` is not a port number")
    })?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

impl MqttSection {
    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        split_broker(&self.broker)?;
        ensure!(
            topic_level(&self.site),
            "mqtt.site `{}` must be 1 to 64 letters, digits, '-' or '_'",
            self.site
        );
        ensure!(
            topic_level(&self.topic_prefix),
            "mqtt.topic_prefix `{}` must be 1 to 64 letters, digits, '-' or '_'",
            self.topic_prefix
        );
        ensure!((1..=MAX_CAPACITY).contains(&self.queue), "mqtt.queue must be 1 to {MAX_CAPACITY} verdicts");
        ensure!(
            self.spool.file_name().is_some() && !self.spool.to_string_lossy().ends_with('/'),
            "mqtt.spool `{}` must name a file",
            self.spool.display()
        );
        ensure!((5..=300).contains(&self.keep_alive_s), "mqtt.keep_alive_s must be 5 to 300 seconds");
        ensure!(
            (100..=60_000).contains(&self.max_age_ms),
            "mqtt.max_age_ms must be 100 to 60000 (a verdict older than that is not acted on)"
        );
        ensure!(
            self.certificate.is_some() == self.private_key.is_some(),
            "mqtt.certificate and mqtt.private_key go together: set both (client certificate) or neither"
        );
        ensure!(
            self.username.is_some() == self.password_file.is_some(),
            "mqtt.username and mqtt.password_file go together: set both or neither"
        );
        if let Some(username) = &self.username {
            ensure!(!username.is_empty(), "mqtt.username must not be empty (omit it for none)");
        }
        if self.insecure {
            for (key, present) in [
                ("ca", self.ca.is_some()),
                ("certificate", self.certificate.is_some()),
                ("private_key", self.private_key.is_some()),
            ] {
                ensure!(!present, "mqtt.{key} is set but mqtt.insecure = true sends plaintext: choose one");
            }
        } else {
            ensure!(
                self.ca.is_some(),
                "mqtt.ca is missing: the broker link is TLS unless mqtt.insecure = true (a lab only)"
            );
            ensure!(
                self.signing_key.is_some(),
                "mqtt.signing_key is missing: every verdict is signed unless mqtt.insecure = true (a lab only)"
            );
        }
        Ok(())
    }

    /// The settings for `board`, paths resolved by `resolve`; reads the password, the TLS files and the
    /// signing key, so that a bad file is a start-up error naming its key.
    pub fn settings(&self, board: &str, resolve: impl Fn(&Path) -> PathBuf) -> Result<MqttSettings> {
        self.validate()?;
        let (host, port) = split_broker(&self.broker)?;
        let tls = match &self.ca {
            Some(ca) if !self.insecure => Some(tls::TlsFiles {
                ca: resolve(ca),
                identity: self
                    .certificate
                    .as_ref()
                    .zip(self.private_key.as_ref())
                    .map(|(certificate, key)| (resolve(certificate), resolve(key))),
            }),
            _ => None,
        };
        let credentials = match (&self.username, &self.password_file) {
            (Some(username), Some(file)) => {
                let text = crate::gate::read_private_file(&resolve(file), "mqtt.password_file")?;
                let password = text.lines().next().unwrap_or("").to_owned();
                ensure!(
                    !password.is_empty(),
                    "mqtt.password_file {}: the first line is empty",
                    file.display()
                );
                Some((username.clone(), password))
            }
            _ => None,
        };
        let signing_key = match &self.signing_key {
            Some(key) => Some(crate::gate::audit::load_device_key(&resolve(key), "mqtt.signing_key")?),
            None => None,
        };
        let mut settings =
            MqttSettings::new(&host, port, &self.site, board, &resolve(&self.spool), self.queue);
        settings.topic_prefix = self.topic_prefix.clone();
        settings.tls = tls;
        settings.credentials = credentials;
        settings.signing_key = signing_key;
        settings.keep_alive = Duration::from_secs(self.keep_alive_s);
        settings.max_age = Duration::from_millis(self.max_age_ms);
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> Result<MqttSection> {
        let text = format!(
            "broker = \"broker.site:8883\"\nsite = \"lyon-2\"\nqueue = 64\nspool = \"mqtt.spool\"\n{extra}"
        );
        let section: MqttSection = toml::from_str(&text)?;
        section.validate()?;
        Ok(section)
    }

    fn refusal(extra: &str) -> String {
        match section(extra) {
            Ok(section) => panic!("accepted: {section:?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn a_tls_section_with_per_device_credentials_is_accepted_and_builds_topics() {
        let section = section(
            "insecure = false\nca = \"ca.crt\"\ncertificate = \"kiosk.crt\"\nprivate_key = \"kiosk.key\"\n\
             username = \"kiosk-7\"\npassword_file = \"mqtt.password\"\nsigning_key = \"signing.key\"",
        )
        .unwrap();
        assert_eq!(
            (section.keep_alive_s, section.max_age_ms, section.topic_prefix.as_str()),
            (30, 5000, "deepgate")
        );
        let settings = MqttSettings::new("broker.site", 8883, &section.site, "kiosk-7", &section.spool, 64);
        assert_eq!(settings.topic("verdict"), "deepgate/lyon-2/kiosk-7/verdict");
        assert_eq!(split_broker("[::1]:1883").unwrap(), ("::1".to_owned(), 1883));
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        let cases = [
            ("insecure = true\nbroker2 = 1", "unknown field `broker2`"),
            ("insecure = false", "mqtt.ca is missing"),
            ("insecure = false\nca = \"ca.crt\"", "mqtt.signing_key is missing"),
            ("insecure = true\nca = \"ca.crt\"", "mqtt.ca is set but mqtt.insecure = true"),
            ("insecure = true\ncertificate = \"kiosk.crt\"", "go together"),
            ("insecure = true\nusername = \"kiosk\"", "mqtt.username and mqtt.password_file"),
            ("insecure = true\nkeep_alive_s = 2", "mqtt.keep_alive_s"),
            ("insecure = true\nmax_age_ms = 10", "mqtt.max_age_ms"),
            ("insecure = true\ntopic_prefix = \"a/b\"", "mqtt.topic_prefix"),
        ];
        for (extra, expected) in cases {
            let message = refusal(extra);
            assert!(message.contains(expected), "{extra}: {message}");
        }
        let with = |key: &str, value: &str| {
            let mut fields = vec![
                ("broker", "\"b:1883\""),
                ("site", "\"s\""),
                ("queue", "4"),
                ("spool", "\"m.spool\""),
                ("insecure", "true"),
            ];
            fields.retain(|(name, _)| *name != key);
            fields.push((key, value));
            let text: String = fields.iter().map(|(name, value)| format!("{name} = {value}\n")).collect();
            let section: MqttSection = toml::from_str(&text).unwrap();
            format!("{:#}", section.validate().unwrap_err())
        };
        assert!(with("broker", "\"broker.site\"").contains("must be host:port"));
        assert!(with("broker", "\"b:0\"").contains("not a port number"));
        assert!(with("broker", "\"::1:1883\"").contains("brackets"));
        assert!(with("site", "\"lyon/2\"").contains("mqtt.site"));
        assert!(with("site", "\"+\"").contains("mqtt.site"));
        assert!(with("queue", "0").contains("mqtt.queue"));
        assert!(with("spool", "\"var/\"").contains("mqtt.spool"));
    }
}
