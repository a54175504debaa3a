//! The site override: a file outside the bundle (by default `/etc/deepgate/site.toml`) laid over the bundle's
//! board config, so that a site's settings survive an upgrade that replaces the bundle. It holds only the keys
//! that differ, is as strict as a board file (an unknown key or a wrong type is refused naming the site file),
//! and its relative paths are relative to the site file's own directory, never to the board's.

use super::{load_table, overlay, BoardConfig, MAX_CONFIG_BYTES};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Where the service looks for a site override when none is named.
pub const DEFAULT_SITE: &str = "/etc/deepgate/site.toml";

/// The site override to apply, and whether its absence is an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteFile {
    /// No override: the board config alone.
    None,
    /// The default place: used when it exists, no override when it does not.
    Default(PathBuf),
    /// Named by the operator: it must exist.
    Named(PathBuf),
}

/// Keys whose values are file paths (string or array of strings) that a relative value in the site file
/// means relative to the site file. Device nodes (`source.device`, `gate.device`, `relay.chip`) are not here:
/// they must be absolute, and their sections refuse a relative one.
pub const PATH_KEYS: &[&str] = &[
    "models.manifest",
    "models.alignment",
    "source.paths",
    "gate.spool",
    "gate.certificate",
    "gate.private_key",
    "gate.controller_ca",
    "gate.signing_key",
    "gate.key",
    "mqtt.spool",
    "mqtt.ca",
    "mqtt.certificate",
    "mqtt.private_key",
    "mqtt.password_file",
    "mqtt.signing_key",
    "audit.path",
    "audit.key",
    "runtime.kernel_cache",
];

/// A board config with its site override applied, and what `deepgate config check` shows about it.
#[derive(Debug)]
pub struct Merged {
    /// The validated configuration (relative paths resolve against the board file's directory).
    pub config: BoardConfig,
    /// The merged table, before it became `config`.
    pub table: toml::Table,
    /// The site file applied, if any.
    pub site: Option<PathBuf>,
    /// The dotted keys the site file set (`decision.frame_threshold`), sorted.
    pub overridden: Vec<String>,
}

impl BoardConfig {
    /// The board config at `board` with the site override `site` laid over it, validated.
    pub fn load_with_site(board: &Path, site: &SiteFile) -> Result<BoardConfig> {
        Ok(merge(board, site)?.config)
    }
}

/// Loads the board config (with its `inherit`s), checks it alone, then lays the site override over it and
/// checks the result; an error names the file at fault.
pub fn merge(board: &Path, site: &SiteFile) -> Result<Merged> {
    let board_table = load_table(board, 0)?;
    let directory = board.parent().map(Path::to_path_buf).unwrap_or_default();
    // The bundle's board must stand on its own: an error found only after the merge is then the site's.
    let alone = from_table(board_table.clone(), directory.clone())
        .with_context(|| format!("board config {}", board.display()))?;
    let site_path = match site {
        SiteFile::None => None,
        SiteFile::Default(path) if !path.exists() => None,
        SiteFile::Default(path) | SiteFile::Named(path) => Some(path.clone()),
    };
    let Some(site_path) = site_path else {
        return Ok(Merged { config: alone, table: board_table, site: None, overridden: Vec::new() });
    };
    let site_table = load_site_table(&site_path)?;
    let mut overridden = Vec::new();
    leaf_keys(&site_table, "", &mut overridden);
    overridden.sort();
    let mut table = board_table;
    overlay(&mut table, site_table);
    let config = from_table(table.clone(), directory).with_context(|| {
        format!(
            "site file {} (over board config {}), which sets {}",
            site_path.display(),
            board.display(),
            overridden.join(", ")
        )
    })?;
    Ok(Merged { config, table, site: Some(site_path), overridden })
}

/// Deserialises and validates a merged table, as `BoardConfig::load` does.
fn from_table(table: toml::Table, directory: PathBuf) -> Result<BoardConfig> {
    let mut config: BoardConfig = table.try_into().context("parsing")?;
    config.validate()?;
    config.directory = directory;
    Ok(config)
}

/// Reads a site file as a table, its relative paths made absolute against its own directory.
fn load_site_table(path: &Path) -> Result<toml::Table> {
    let size =
        std::fs::metadata(path).with_context(|| format!("reading site file {}", path.display()))?.len();
    ensure!(
        size <= MAX_CONFIG_BYTES,
        "site file {} is {size} bytes; the limit is {MAX_CONFIG_BYTES}",
        path.display()
    );
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading site file {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("site file {}: parsing", path.display()))?;
    ensure!(
        !table.contains_key("inherit"),
        "site file {}: `inherit` is not a site key: the site file overrides the board config given by --board \
         (the bundle's), whatever its name",
        path.display()
    );
    let absolute =
        std::path::absolute(path).with_context(|| format!("site file {}: its directory", path.display()))?;
    let directory = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    for key in PATH_KEYS {
        resolve_path_key(&mut table, key, &directory)
            .with_context(|| format!("site file {}: {key}", path.display()))?;
    }
    Ok(table)
}

/// Makes the relative path(s) at dotted `key` absolute against `directory`; absent keys are left alone.
fn resolve_path_key(table: &mut toml::Table, key: &str, directory: &Path) -> Result<()> {
    let Some((section, name)) = key.split_once('.') else { return Ok(()) };
    let Some(toml::Value::Table(section)) = table.get_mut(section) else { return Ok(()) };
    let Some(value) = section.get_mut(name) else { return Ok(()) };
    let resolve = |value: &mut toml::Value| -> Result<()> {
        let toml::Value::String(text) = value else { bail!("must be a path (a string)") };
        let path = Path::new(text.as_str());
        if path.is_relative() && !text.is_empty() {
            let joined = super::tidy(&directory.join(path));
            let Some(joined) = joined.to_str() else { bail!("{} is not UTF-8", joined.display()) };
            *text = joined.to_string();
        }
        Ok(())
    };
    match value {
        toml::Value::Array(items) => items.iter_mut().try_for_each(resolve),
        other => resolve(other),
    }
}

/// The dotted names of every non-table value under `table`.
fn leaf_keys(table: &toml::Table, prefix: &str, keys: &mut Vec<String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, &name, keys),
            _ => keys.push(name),
        }
    }
}

/// The merged configuration as TOML text (the `toml` crate's writer); each key the site file set is followed by a
/// comment naming that file.
pub fn to_toml(merged: &Merged) -> Result<String> {
    let text = toml::to_string(&merged.table).context("writing the merged configuration as TOML")?;
    let Some(site) = &merged.site else { return Ok(text) };
    let mut document: toml_edit::DocumentMut =
        text.parse().context("reading back the merged configuration")?;
    let note = format!("  # {}", site.display());
    for key in &merged.overridden {
        let mut parts = key.split('.');
        let mut item = parts.next().and_then(|first| document.get_mut(first));
        for part in parts {
            item = item.and_then(|inner| inner.get_mut(part));
        }
        if let Some(value) = item.and_then(toml_edit::Item::as_value_mut) {
            value.decor_mut().set_suffix(note.as_str());
        }
    }
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_default_site_file_is_no_override_but_a_named_one_is_an_error() {
        let board = Path::new("board/host.toml");
        let absent = crate::testing::scratch_dir("site").join("absent.toml");
        let merged = merge(board, &SiteFile::Default(absent.clone())).expect("no site file, no override");
        assert!(merged.site.is_none() && merged.overridden.is_empty());
        let error = format!("{:#}", merge(board, &SiteFile::Named(absent.clone())).unwrap_err());
        assert!(error.contains(&absent.display().to_string()), "{error}");
    }

    #[test]
    fn printed_values_read_back_as_the_same_values() {
        let text = "a = \"quote \\\" back\\\\slash \\u007F tab\\t\"\nb = 1.0\nc = -3\nd = [1.5, inf]\n\
                    e = { \"odd key\" = true }\n[f.g]\nh = nan\n";
        let table: toml::Table = toml::from_str(text).expect("valid TOML");
        let merged = Merged {
            config: BoardConfig::parse(&std::fs::read_to_string("board/host.toml").expect("host"))
                .expect("valid"),
            table: table.clone(),
            site: None,
            overridden: Vec::new(),
        };
        let again: toml::Table =
            toml::from_str(&to_toml(&merged).expect("written")).expect("printed TOML parses");
        assert_eq!(again.get("a"), table.get("a"));
        assert_eq!(again.get("b"), Some(&toml::Value::Float(1.0)));
        assert_eq!(again.get("e"), table.get("e"));
        assert!(again["f"]["g"]["h"].as_float().is_some_and(f64::is_nan));
    }
}
