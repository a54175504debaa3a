//! `deepgate install` end to end in a temporary root: real bundles (the built `deepgate` binary, the shipped
//! models, a board replaying a photo, `SHA256SUMS`), signed with a key made here, installed by the real binary.
//! A good update switches `current` and reaches READY in a trial run; a tampered bundle (a flipped byte, a
//! swapped archive, an edited header, another key) and a hostile archive (`..`, an absolute path, a symbolic
//! link) are refused with the root unchanged; a version whose models are broken, and one that never gets a
//! frame, are rolled back; a downgrade needs `--allow-downgrade`; the pinned key is never replaced by a flag.
//! The site file and the state directory are never touched.

mod common;

use deepgate::update::{sign, Header, FORMAT};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A bundle's files by path (below its top directory): contents and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

fn hex(bytes: &[u8]) -> String {
    deepgate::hex::to_hex(bytes)
}

/// The files of a good bundle: this build's binary, the shipped models the manifest lists, and
/// `board/kiosk.toml`, board/host.toml replaying one photo over and over (so `run` reaches its first frame and
/// keeps going until the installer stops it).
fn good_files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut files = Files::new();
        files.insert("bin/deepgate".into(), (std::fs::read(common::exe()).unwrap(), 0o755));
        let models = common::root().join("models");
        let manifest_text = std::fs::read_to_string(models.join("manifest.toml")).unwrap();
        let manifest: toml::Table = manifest_text.parse().unwrap();
        let mut names = vec!["manifest.toml".to_string(), "alignment.toml".into()];
        for model in manifest["model"].as_array().unwrap() {
            for key in ["file", "licence_file"] {
                names.push(model[key].as_str().unwrap().to_string());
            }
        }
        for name in names {
            files.insert(format!("models/{name}"), (std::fs::read(models.join(&name)).unwrap(), 0o644));
        }
        files.insert("board/kiosk.toml".into(), (kiosk_board(&common::fixture("faces/obama.jpg")), 0o644));
        files
    })
}

/// board/host.toml replaying `input` over and over at 5 frames per second, as the bundle's `board/kiosk.toml`.
fn kiosk_board(input: &Path) -> Vec<u8> {
    let mut variant = common::BoardVariant::load(&common::root().join("board/host.toml"));
    let paths: toml_edit::Array = [input.to_str().expect("a UTF-8 path")].into_iter().collect();
    variant.set_value("source.paths", paths).set("source.repeat", "true").set("source.frame_rate", "5.0");
    variant.text().into_bytes()
}

/// One tar entry as a test wants it, hostile ones included (written by hand, past `tar`'s own path checks).
enum Entry<'a> {
    Directory(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

fn archive(entries: &[Entry]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (path, data, kind, mode): (&str, &[u8], _, _) = match entry {
            Entry::Directory(path) => (path, &[], tar::EntryType::Directory, 0o755),
            Entry::File(path, data, mode) => (path, data, tar::EntryType::Regular, *mode),
            Entry::Symlink(path, target) => {
                header.set_link_name(target).unwrap();
                (path, &[], tar::EntryType::Symlink, 0o777)
            }
        };
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A well-formed bundle of `files` under `top/`, with its `SHA256SUMS`.
fn bundle_archive(top: &str, files: &Files) -> Vec<u8> {
    let mut directories: Vec<String> = vec![format!("{top}/")];
    for path in files.keys() {
        let mut parent = Path::new(path).parent();
        while let Some(directory) = parent.filter(|directory| !directory.as_os_str().is_empty()) {
            directories.push(format!("{top}/{}/", directory.display()));
            parent = directory.parent();
        }
    }
    directories.sort();
    directories.dedup();
    let sums: String =
        files.iter().map(|(path, (data, _))| format!("{}  {path}\n", hex(&Sha256::digest(data)))).collect();
    let paths: Vec<(String, &[u8], u32)> = files
        .iter()
        .map(|(path, (data, mode))| (format!("{top}/{path}"), data.as_slice(), *mode))
        .chain([(format!("{top}/SHA256SUMS"), sums.as_bytes(), 0o644)])
        .collect();
    let mut entries: Vec<Entry> = directories.iter().map(|directory| Entry::Directory(directory)).collect();
    entries.extend(paths.iter().map(|(path, data, mode)| Entry::File(path, data, *mode)));
    archive(&entries)
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Writes `archive` as `directory/name.tar.gz` with its signature file for `version`; returns the bundle's path.
fn signed(directory: &Path, name: &str, archive: &[u8], version: &str, key: &SigningKey) -> PathBuf {
    let bundle = directory.join(format!("{name}.tar.gz"));
    std::fs::write(&bundle, archive).unwrap();
    let header = Header {
        format: FORMAT,
        file: format!("{name}.tar.gz"),
        size: archive.len() as u64,
        sha256: hex(&Sha256::digest(archive)),
        version: version.into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        target: format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
        board: "kiosk".into(),
        created: 1_700_000_000,
    };
    std::fs::write(directory.join(format!("{name}.tar.gz.sig")), sign(&header, key)).unwrap();
    bundle
}

fn public_key_file(directory: &Path, key: &SigningKey) -> PathBuf {
    let path = directory.join(format!("release-{}.pub", hex(&key.verifying_key().as_bytes()[..4])));
    std::fs::write(&path, format!("{}\n", hex(key.verifying_key().as_bytes()))).unwrap();
    path
}

/// A root as a board has it before an update: the site file and the state directory, which must survive.
fn board_root(directory: &Path) -> PathBuf {
    let root = directory.join("root");
    std::fs::create_dir_all(root.join("etc/deepgate")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/deepgate")).unwrap();
    std::fs::write(
        root.join("etc/deepgate/site.toml"),
        "[board]\ndescription = \"door 3, north entrance\"\n",
    )
    .unwrap();
    std::fs::write(root.join("var/lib/deepgate/osdp.key"), "secret\n").unwrap();
    root
}

/// Every path under `root` with its kind and contents' sha256 or link target: equal snapshots, unchanged root.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let metadata = path.symlink_metadata().unwrap();
            let what = if metadata.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if metadata.is_dir() {
                stack.push(path.clone());
                "dir".into()
            } else {
                hex(&Sha256::digest(std::fs::read(&path).unwrap()))
            };
            found.insert(name, what);
        }
    }
    found
}

fn install(bundle: &Path, root: &Path, extra: &[&str]) -> Output {
    Command::new(common::exe())
        .arg("install")
        .arg(bundle)
        .arg("--root")
        .arg(root)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("deepgate install runs")
}

fn said(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("one JSON line: {}", said(output)))
}

fn current(root: &Path) -> Option<PathBuf> {
    std::fs::read_link(root.join("opt/deepgate/current")).ok()
}

#[test]
fn a_good_update_switches_and_reaches_ready_and_a_broken_one_is_rolled_back() {
    let directory = common::temp_dir("install-update");
    let root = board_root(&directory);
    let release = key(1);
    let trust = public_key_file(&directory, &release);
    let untouched = |root: &Path| {
        let site = std::fs::read_to_string(root.join("etc/deepgate/site.toml")).unwrap();
        assert!(site.contains("north entrance"), "{site}");
        assert_eq!(std::fs::read_to_string(root.join("var/lib/deepgate/osdp.key")).unwrap(), "secret\n");
    };

    // The first install pins the key and fills slot a.
    let first =
        signed(&directory, "v1", &bundle_archive("deepgate-0.1.0-kiosk", good_files()), "0.1.0", &release);
    let trust_flag = ["--trust-key", trust.to_str().unwrap(), "--ready-timeout", "120"];
    let output = install(&first, &root, &trust_flag);
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(report(&output)["installed"], "a", "{}", said(&output));
    assert_eq!(current(&root).as_deref(), Some(Path::new("a")));
    let pinned = std::fs::read_to_string(root.join("etc/deepgate/update.pub")).unwrap();
    assert_eq!(pinned.trim(), hex(release.verifying_key().as_bytes()));
    assert!(root.join("opt/deepgate/a/bin/deepgate").is_file());
    assert!(root.join("opt/deepgate/a/bundle.sig").is_file());
    // The unit's paths go through `current`.
    assert_eq!(std::fs::read_link(root.join("opt/deepgate/bin")).unwrap(), Path::new("current/bin"));
    assert!(root.join("opt/deepgate/board/kiosk.toml").is_file());
    untouched(&root);

    // The update goes to slot b, signed by the pinned key (no --trust-key needed now), and reaches READY.
    let second =
        signed(&directory, "v2", &bundle_archive("deepgate-0.2.0-kiosk", good_files()), "0.2.0", &release);
    let output = install(&second, &root, &["--ready-timeout", "120"]);
    assert!(output.status.success(), "{}", said(&output));
    let value = report(&output);
    assert_eq!(
        (value["installed"].as_str(), value["previous"].as_str()),
        (Some("b"), Some("0.1.0")),
        "{value}"
    );
    assert!(value["ready_after_ms"].as_u64().unwrap() > 0, "{value}");
    assert_eq!(current(&root).as_deref(), Some(Path::new("b")));
    assert!(root.join("opt/deepgate/a/bin/deepgate").is_file(), "the previous slot stays for a rollback");
    untouched(&root);

    // A version whose classifier is damaged (consistent archive, signed, but the manifest's sha256 no longer
    // matches): the runtime refuses its models, never sends READY=1, and the install switches back to b.
    let mut broken = good_files().clone();
    let classifier = broken.get_mut("models/deepgate_student.onnx").unwrap();
    let middle = classifier.0.len() / 2;
    classifier.0[middle] ^= 0x40;
    let third = signed(&directory, "v3", &bundle_archive("deepgate-0.3.0-kiosk", &broken), "0.3.0", &release);
    let output = install(&third, &root, &["--ready-timeout", "60"]);
    assert_eq!(output.status.code(), Some(1), "{}", said(&output));
    let value = report(&output);
    assert_eq!((value["rolled_back"].as_str(), value["current"].as_str()), (Some("a"), Some("b")), "{value}");
    assert!(value["why"].as_str().unwrap().contains("without READY=1"), "{value}");
    assert_eq!(current(&root).as_deref(), Some(Path::new("b")), "rolled back to the version that works");
    untouched(&root);

    // A version that starts but never gets a frame (its replay source is a named pipe nobody writes): silent
    // past the bound, stopped, rolled back.
    let fifo = directory.join("never.y4m");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo {}", fifo.display());
    let mut silent = good_files().clone();
    silent.get_mut("board/kiosk.toml").unwrap().0 = kiosk_board(&fifo);
    let fourth =
        signed(&directory, "v4", &bundle_archive("deepgate-0.4.0-kiosk", &silent), "0.4.0", &release);
    let output = install(&fourth, &root, &["--ready-timeout", "5"]);
    assert_eq!(output.status.code(), Some(1), "{}", said(&output));
    let value = report(&output);
    assert_eq!((value["rolled_back"].as_str(), value["current"].as_str()), (Some("a"), Some("b")), "{value}");
    assert!(value["why"].as_str().unwrap().contains("no READY=1 within 5 s"), "{value}");
    assert_eq!(current(&root).as_deref(), Some(Path::new("b")));
    untouched(&root);

    // The current version is 0.2.0: 0.1.0 again is a downgrade, refused unless asked for, nothing changed.
    let before = snapshot(&root);
    let output = install(&first, &root, &["--ready-timeout", "120"]);
    assert_eq!(output.status.code(), Some(2), "{}", said(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("older than the installed 0.2.0"),
        "{}",
        said(&output)
    );
    assert_eq!(snapshot(&root), before);
    let output = install(&first, &root, &["--ready-timeout", "120", "--allow-downgrade"]);
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(current(&root).as_deref(), Some(Path::new("a")));
    untouched(&root);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn tampered_bundles_and_other_keys_are_refused_before_anything_is_written() {
    let directory = common::temp_dir("install-tampered");
    let root = board_root(&directory);
    let release = key(1);
    let trust = public_key_file(&directory, &release);
    // Small archives: these are refused before any entry is read, and the checks do not depend on the size.
    let mut files = Files::new();
    files.insert("bin/deepgate".into(), (b"#!/bin/sh\nexit 0\n".to_vec(), 0o755));
    files.insert("board/kiosk.toml".into(), (b"[board]\n".to_vec(), 0o644));
    let good = bundle_archive("deepgate-0.1.0-kiosk", &files);
    let before = snapshot(&root);
    let refused = |bundle: &Path, extra: &[&str], expected: &str| {
        let output = install(bundle, &root, extra);
        assert_eq!(output.status.code(), Some(2), "{}", said(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{expected:?} not said: {}",
            said(&output)
        );
        assert_eq!(snapshot(&root), before, "the root changed");
    };
    let trusted = ["--trust-key", trust.to_str().unwrap()];

    // One byte flipped in the archive.
    let bundle = signed(&directory, "flipped", &good, "0.1.0", &release);
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&bundle, bytes).unwrap();
    refused(&bundle, &trusted, "the archive was changed");

    // The archive swapped for another (validly signed) one.
    let other =
        signed(&directory, "other", &bundle_archive("deepgate-0.0.9-kiosk", &files), "0.0.9", &release);
    let bundle = signed(&directory, "swapped", &good, "0.1.0", &release);
    std::fs::copy(&other, &bundle).unwrap();
    refused(&bundle, &trusted, "signed header says");

    // The signed header edited (a version bumped).
    let bundle = signed(&directory, "edited", &good, "0.1.0", &release);
    let signature = directory.join("edited.tar.gz.sig");
    let text = std::fs::read_to_string(&signature).unwrap().replace("0.1.0", "9.1.0");
    std::fs::write(&signature, text).unwrap();
    refused(&bundle, &trusted, "does not verify");

    // Signed by a key that is not the trusted one.
    let bundle = signed(&directory, "stranger", &good, "0.1.0", &key(2));
    refused(&bundle, &trusted, "does not verify");
    // No key at all: the first install must name one.
    refused(&bundle, &[], "no pinned update key");
    // No signature file.
    let bundle = directory.join("unsigned.tar.gz");
    std::fs::write(&bundle, &good).unwrap();
    refused(&bundle, &trusted, "reading the signature");
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_hostile_archive_is_refused_even_when_signed_and_the_pin_is_never_replaced_by_a_flag() {
    let directory = common::temp_dir("install-hostile");
    let root = board_root(&directory);
    let release = key(1);
    let trust = public_key_file(&directory, &release);
    let sums = "";
    let cases: [(&str, Vec<Entry>, &str); 5] = [
        ("traversal", vec![Entry::File("top/../../escaped", b"x", 0o644)], "only plain names"),
        ("absolute", vec![Entry::File("/tmp/escaped", b"x", 0o644)], "an absolute path"),
        (
            "symlink",
            vec![
                Entry::Directory("top/"),
                Entry::Symlink("top/bin", "/usr/bin"),
                Entry::File("top/SHA256SUMS", sums.as_bytes(), 0o644),
            ],
            "Symlink",
        ),
        (
            "two-tops",
            vec![Entry::File("top/SHA256SUMS", sums.as_bytes(), 0o644), Entry::File("other/x", b"x", 0o644)],
            "one top directory",
        ),
        (
            "unlisted",
            vec![Entry::File("top/SHA256SUMS", sums.as_bytes(), 0o644), Entry::File("top/x", b"x", 0o644)],
            "is not in SHA256SUMS",
        ),
    ];
    let before = snapshot(&root);
    for (name, entries, expected) in cases {
        let bundle = signed(&directory, name, &archive(&entries), "0.1.0", &release);
        let output = install(&bundle, &root, &["--trust-key", trust.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{name}: {}", said(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{name}: {expected:?} not said: {}", said(&output));
        assert_eq!(snapshot(&root), before, "{name}: the root changed");
        assert!(!directory.join("escaped").exists() && !Path::new("/tmp/escaped").exists(), "{name}");
    }

    // Once a key is pinned, a bundle signed by another key is refused even with that key offered by flag.
    std::fs::create_dir_all(root.join("etc/deepgate")).unwrap();
    std::fs::write(
        root.join("etc/deepgate/update.pub"),
        format!("{}\n", hex(release.verifying_key().as_bytes())),
    )
    .unwrap();
    let stranger = key(3);
    let offered = public_key_file(&directory, &stranger);
    let bundle = signed(&directory, "stranger", &archive(&[Entry::Directory("top/")]), "0.1.0", &stranger);
    let before = snapshot(&root);
    let output = install(&bundle, &root, &["--trust-key", offered.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", said(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("pins another update key"), "{}", said(&output));
    assert_eq!(snapshot(&root), before);

    // `--check` verifies without writing: the good small bundle passes and says what it is.
    let mut files = Files::new();
    files.insert("bin/deepgate".into(), (b"#!/bin/sh\n".to_vec(), 0o755));
    let bundle = signed(&directory, "checked", &bundle_archive("top", &files), "0.4.0", &release);
    let output = install(&bundle, &root, &["--check"]);
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(report(&output)["version"], "0.4.0");
    assert_eq!(snapshot(&root), before);
    std::fs::remove_dir_all(&directory).unwrap();
}
