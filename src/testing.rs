//! Support for the project's tests (unit and integration): a reproducible pseudo-random generator, so that
//! tests get varied pixels, scores and corruptions without a dependency, and the one way a test gets a scratch
//! directory. Not part of the runtime.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory for one test under the system's temporary directory, named after `name` and
/// unique to this process and call (tests run in parallel threads and in several processes at once). It is
/// left in place afterwards: tests hand it to child processes and keep paths into it after the call returns.
pub fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let directory = std::env::temp_dir().join(format!(
        "deepgate-test-{}-{name}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // A directory of the same name left by an earlier process with a recycled id.
    let _ = std::fs::remove_dir_all(&directory);
    if let Err(error) = std::fs::create_dir_all(&directory) {
        panic!("creating the scratch directory {}: {error}", directory.display());
    }
    directory
}

/// Marsaglia's xorshift64. The seed must not be zero.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 32) as u8
    }

    pub fn bytes(&mut self, count: usize) -> Vec<u8> {
        (0..count).map(|_| self.byte()).collect()
    }

    /// Uniform in 0..bound (0 when bound is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }
}

/// A board config variant for a test: a board file's TOML document changed key by key, through `toml_edit`
/// (values, not text), so that a variant survives the file's comments and layout changing, and says which keys
/// it changes. Every method panics with the key path when the change cannot be made: it is a test's mistake.
#[derive(Clone, Debug)]
pub struct BoardVariant {
    document: toml_edit::DocumentMut,
}

impl BoardVariant {
    /// The board config `text` (a file as written, comments included).
    pub fn parse(text: &str) -> BoardVariant {
        match text.parse() {
            Ok(document) => BoardVariant { document },
            Err(error) => panic!("a board variant starts from valid TOML: {error}"),
        }
    }

    /// The board config file at `path`.
    pub fn load(path: &std::path::Path) -> BoardVariant {
        match std::fs::read_to_string(path) {
            Ok(text) => BoardVariant::parse(&text),
            Err(error) => panic!("reading the board config {}: {error}", path.display()),
        }
    }

    /// Sets `key` (a dotted path, e.g. `source.frame_rate`) to `value` written as TOML (`5.0`, `"cuda"`,
    /// `nan`, `["a", "b"]`, or an inline table `{ kind = "tcp", queue = 16 }`, which becomes a section).
    /// Missing tables on the way are made; a key that does not exist yet is added (an unknown key, for a test
    /// of strictness).
    pub fn set(&mut self, key: &str, value: &str) -> &mut BoardVariant {
        match value.parse::<toml_edit::Value>() {
            Ok(value) => self.set_value(key, value),
            Err(error) => panic!("board variant: `{key} = {value}` is not a TOML value: {error}"),
        }
    }

    /// Sets `key` to a value made in Rust (a path as a string, a number, an array).
    pub fn set_value(&mut self, key: &str, value: impl Into<toml_edit::Value>) -> &mut BoardVariant {
        let (parent, last) = split_key(key);
        let table = self.table_mut(parent, key);
        let item = match value.into() {
            // A table inside a table reads as a section, as the board files write them.
            toml_edit::Value::InlineTable(inline) => toml_edit::Item::Table(inline.into_table()),
            value => toml_edit::Item::Value(value),
        };
        table.insert(last, item);
        self
    }

    /// Removes `key`, which must be there (a variant that removes nothing tests nothing).
    pub fn remove(&mut self, key: &str) -> &mut BoardVariant {
        let (parent, last) = split_key(key);
        if self.table_mut(parent, key).remove(last).is_none() {
            panic!("board variant: there is no `{key}` to remove");
        }
        self
    }

    /// The value at `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<&toml_edit::Value> {
        let mut item = self.document.as_item();
        for segment in key.split('.') {
            item = item.get(segment)?;
        }
        item.as_value()
    }

    /// The variant as TOML text.
    pub fn text(&self) -> String {
        self.document.to_string()
    }

    /// Writes the variant to `path`.
    pub fn write(&self, path: &std::path::Path) {
        if let Err(error) = std::fs::write(path, self.text()) {
            panic!("writing the board variant {}: {error}", path.display());
        }
    }

    /// The table at the dotted path `parent` (the root when empty), made where missing.
    fn table_mut(&mut self, parent: &str, key: &str) -> &mut toml_edit::Table {
        let mut table = self.document.as_table_mut();
        for segment in parent.split('.').filter(|segment| !segment.is_empty()) {
            let item = table.entry(segment).or_insert_with(toml_edit::table);
            table = match item.as_table_mut() {
                Some(table) => table,
                None => panic!("board variant: `{segment}` in `{key}` is not a section"),
            };
        }
        table
    }
}

/// `a.b.c` as (`a.b`, `c`); a key path must name a key.
fn split_key(key: &str) -> (&str, &str) {
    let (parent, last) = key.rsplit_once('.').unwrap_or(("", key));
    if last.is_empty() || key.contains(char::is_whitespace) || key.contains(['=', '[', '"']) {
        panic!("board variant: `{key}` is not a key path such as `source.frame_rate`");
    }
    (parent, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOARD: &str = "# the board\n[source]\nkind = \"replay\"   # a comment kept\nframe_rate = 0.0\n\n\
                         [gate]\nkind = \"stdout\"\n";

    #[test]
    fn a_variant_changes_values_adds_and_removes_keys_and_keeps_the_rest() {
        let mut variant = BoardVariant::parse(BOARD);
        variant.set("source.frame_rate", "5.0").set("colour", "\"red\"").remove("source.kind");
        variant.set("gate", "{ kind = \"tcp\", queue = 16 }").set("audit.path", "\"receipts.jsonl\"");
        let text = variant.text();
        let table: toml::Table = toml::from_str(&text).expect("the variant is TOML");
        assert_eq!(table["source"]["frame_rate"].as_float(), Some(5.0));
        assert!(table["source"].get("kind").is_none());
        assert_eq!(table["colour"].as_str(), Some("red"));
        assert_eq!(table["gate"]["kind"].as_str(), Some("tcp"), "a set section replaces the old one");
        assert_eq!(table["gate"]["queue"].as_integer(), Some(16));
        assert_eq!(table["audit"]["path"].as_str(), Some("receipts.jsonl"));
        assert!(
            text.contains("# the board") && text.contains("[gate]"),
            "comments and sections kept:\n{text}"
        );
        let mut nan = BoardVariant::parse(BOARD);
        nan.set("source.frame_rate", "nan");
        let table: toml::Table = toml::from_str(&nan.text()).expect("the variant is TOML");
        assert!(table["source"]["frame_rate"].as_float().is_some_and(f64::is_nan));
    }

    #[test]
    fn a_change_that_cannot_be_made_names_the_key() {
        let message = |change: fn(&mut BoardVariant)| {
            let error =
                std::panic::catch_unwind(|| change(&mut BoardVariant::parse(BOARD))).expect_err("refused");
            error.downcast_ref::<String>().cloned().unwrap_or_default()
        };
        assert!(message(|variant| {
            variant.remove("source.paths");
        })
        .contains("no `source.paths`"));
        assert!(message(|variant| {
            variant.set("source.kind.x", "1");
        })
        .contains("`kind` in `source.kind.x`"));
        assert!(message(|variant| {
            variant.set("frame_rate = 0.0", "1");
        })
        .contains("not a key path"));
        assert!(message(|variant| {
            variant.set("source.frame_rate", "five");
        })
        .contains("not a TOML value"));
    }
}
