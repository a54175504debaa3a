//! `cargo xtask dist --board <name>`: the one archive a Jetson installs, built reproducibly: the aarch64
//! release binary, the board config (and what it inherits), the models the manifest lists, the systemd unit,
//! `LICENSE` and `THIRD-PARTY-NOTICES` (`notices`), and `SHA256SUMS`. Everything is checked before the long
//! cross build starts. With `--signing-key FILE` the bundle gets its detached Ed25519 signature,
//! `<bundle>.sig`, which `deepgate install` checks against the key pinned on the board (the format is
//! `src/update/mod.rs`'s; `cargo xtask ci` verifies one with the runtime). A release engineer must say which: a
//! key, or `--unsigned` for a bundle boards will refuse (a lab's), so an unsigned bundle is never made by
//! forgetting a flag.

use crate::ci::{root, target_dir};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The systemd unit in the bundle (a template: the instance name is the board, `deepgate@jetson-orin-nano`).
const SERVICE: &str = "board/deepgate@.service";

/// A file of the bundle: where it comes from and its mode.
struct Source {
    path: PathBuf,
    mode: u32,
}

/// How the bundle is signed: with the key in a file, or not at all (`--unsigned`, said explicitly).
enum Signing {
    Key(PathBuf),
    Unsigned,
}

pub fn dist(arguments: &[String]) -> Result<()> {
    let usage = || -> Result<String> {
        Ok(format!(
            "usage: cargo xtask dist --board <name> (--signing-key FILE | --unsigned)   (known boards: {})",
            known_boards()?.join(", ")
        ))
    };
    let (board, signing) = match arguments {
        [flag, board, sign, key] if flag == "--board" && sign == "--signing-key" => {
            (board.as_str(), Signing::Key(PathBuf::from(key)))
        }
        [flag, board, unsigned] if flag == "--board" && unsigned == "--unsigned" => (board.as_str(), Signing::Unsigned),
        [flag, _] if flag == "--board" => bail!(
            "{}\nA bundle needs --signing-key FILE (the release key, 64 hex digits, mode 600; `deepgate audit keygen \
             --out FILE` makes one): boards refuse unsigned bundles. --unsigned makes one anyway (a lab's).",
            usage()?
        ),
        _ => bail!("{}", usage()?),
    };
    // The key is read before the long build: a wrong path or mode should not cost the cross build.
    let signing_key = match &signing {
        Signing::Key(path) => Some(read_signing_key(path)?),
        Signing::Unsigned => None,
    };
    let known = known_boards()?;
    if !known.iter().any(|name| name == board) {
        bail!(
            "unknown board `{board}`: known boards are {} (board/<name>.toml; board/host.toml is the development \
             workstation's config and replays photos from tests/, which no bundle carries)",
            known.join(", ")
        );
    }
    let version = package_version()?;
    let name = format!("deepgate-{version}-{board}-aarch64");
    // Gather and check every file first: a missing model should not cost a 7-minute cross build.
    let mut files = bundle_files(board)?;
    // The project's licence and the third-party notices generated from the lock file (xtask/src/notices.rs).
    for (bundle_path, path) in crate::notices::bundle_licences(&target_dir().join("dist").join(board))? {
        files.insert(bundle_path, Source { path, mode: 0o644 });
    }
    let binary = crate::cross::build_binary()?;
    crate::cross::check_aarch64_elf(&binary)?;
    crate::cross::check_glibc(&binary)?;
    // The release profile keeps line tables for readable backtraces here (140 MB); the board gets the binary
    // without debug sections (about 30 MB) but with its symbols, so a backtrace there still names functions.
    let stripped = binary.with_file_name("deepgate.dist");
    crate::ci::run("aarch64-linux-gnu-strip", &["--strip-debug", "-o", path_str(&stripped)?, path_str(&binary)?])
        .context("stripping debug sections from the aarch64 binary (aarch64-linux-gnu-strip, from binutils-aarch64-linux-gnu: run `cargo xtask setup`)")?;
    files.insert("bin/deepgate".into(), Source { path: stripped, mode: 0o755 });

    let (mtime, mtime_origin) = source_date()?;
    let directory = target_dir().join("dist");
    std::fs::create_dir_all(&directory).with_context(|| format!("creating {}", directory.display()))?;
    let archive = directory.join(format!("{name}.tar.gz"));
    write_archive(&archive, &name, &files, mtime)?;

    let bytes = std::fs::read(&archive).with_context(|| format!("reading back {}", archive.display()))?;
    let signature_path = PathBuf::from(format!("{}.sig", archive.display()));
    let signed = match &signing_key {
        Some(key) => {
            let header = BundleHeader {
                file: format!("{name}.tar.gz"),
                bytes: &bytes,
                version: &version,
                commit: &git_commit(),
                target: crate::setup::AARCH64,
                board,
                created: mtime,
            };
            write_signature(&signature_path, &header, key)?;
            format!(
                "signature {} (public key {})",
                signature_path.display(),
                hex(key.verifying_key().as_bytes())
            )
        }
        None => {
            // A signature left from an earlier signed run would not match this archive.
            let _ = std::fs::remove_file(&signature_path);
            "UNSIGNED (--unsigned): `deepgate install` refuses it".to_string()
        }
    };
    eprintln!(
        "\ndist: {} ({:.1} MiB, {} files, mtimes {mtime_origin})\nsha256 {}\n{signed}",
        archive.display(),
        bytes.len() as f64 / (1024.0 * 1024.0),
        files.len() + 1,
        hex(&Sha256::digest(&bytes))
    );
    Ok(())
}

/// CI's dist stage: a throwaway release key (made fresh, mode 600, under the target directory), the bundle
/// signed with it, then checked by the runtime itself (`deepgate install --check` with the key's public half),
/// so the signature xtask writes and the one the board verifies cannot drift apart.
pub fn signed_for_ci(board: &str, deepgate: &Path) -> Result<()> {
    let directory = target_dir().join("dist");
    std::fs::create_dir_all(&directory).with_context(|| format!("creating {}", directory.display()))?;
    let key_path = directory.join("ci-throwaway-release.key");
    let _ = std::fs::remove_file(&key_path);
    let key = generate_signing_key(&key_path)?;
    let public = directory.join("ci-throwaway-release.pub");
    std::fs::write(&public, format!("{}\n", hex(key.verifying_key().as_bytes())))
        .with_context(|| format!("writing {}", public.display()))?;
    dist(&["--board".into(), board.into(), "--signing-key".into(), path_str(&key_path)?.into()])?;
    let bundle = directory.join(format!("deepgate-{}-{board}-aarch64.tar.gz", package_version()?));
    let scratch = directory.join("ci-install-root");
    crate::ci::run(
        path_str(deepgate)?,
        &[
            "install",
            "--check",
            path_str(&bundle)?,
            "--trust-key",
            path_str(&public)?,
            "--root",
            path_str(&scratch)?,
        ],
    )
    .context("the runtime refused the bundle dist signed")
}

/// What the signature vouches for (`src/update/mod.rs`, `Header`).
struct BundleHeader<'a> {
    file: String,
    bytes: &'a [u8],
    version: &'a str,
    commit: &'a str,
    target: &'a str,
    board: &'a str,
    created: u64,
}

/// The signature file: the header lines exactly as the runtime's `Header::to_text` writes them, then the
/// Ed25519 signature of those bytes as the last line. Ed25519 signatures are deterministic, so the same archive
/// and key give the same file.
fn signature_text(header: &BundleHeader, key: &ed25519_dalek::SigningKey) -> String {
    use ed25519_dalek::Signer;
    let text = format!(
        "# deepgate update bundle signature (README, \"Updates\"): `deepgate install` checks it\n\
         format = 1\nfile = {:?}\nsize = {}\nsha256 = {:?}\nversion = {:?}\ncommit = {:?}\n\
         target = {:?}\nboard = {:?}\ncreated = {}\n",
        header.file,
        header.bytes.len(),
        hex(&Sha256::digest(header.bytes)),
        header.version,
        header.commit,
        header.target,
        header.board,
        header.created
    );
    let signature = key.sign(text.as_bytes());
    format!("{text}signature = \"{}\"\n", hex(&signature.to_bytes()))
}

fn write_signature(path: &Path, header: &BundleHeader, key: &ed25519_dalek::SigningKey) -> Result<()> {
    let partial = path.with_extension("sig.partial");
    std::fs::write(&partial, signature_text(header, key))
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

/// The release key: 64 hex digits of Ed25519 seed (as `deepgate audit keygen` writes one), in a file only its
/// owner can read.
pub fn read_signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading the signing key {}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    ensure!(
        mode & 0o077 == 0,
        "the signing key {} is readable by group or others (mode {mode:o}); chmod 600 it",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    let text = text.trim();
    ensure!(
        text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()),
        "the signing key {} must be 64 hexadecimal digits (`deepgate audit keygen --out FILE` makes one)",
        path.display()
    );
    let mut seed = [0u8; 32];
    for (index, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)?;
    }
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Makes a new signing key file (mode 600, never over an existing file) from the kernel's random source: CI's
/// throwaway release key.
pub fn generate_signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{}", hex(&seed)).and_then(|()| file.sync_all())?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// The commit the bundle is built from, as the binary's start-up line names it (12 digits, `build.rs`), with
/// `-dirty` when tracked files have uncommitted changes; "unknown" outside a git checkout.
fn git_commit() -> String {
    let git = |arguments: &[&str]| {
        std::process::Command::new("git")
            .args(arguments)
            .current_dir(root())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => commit,
            _ => format!("{commit}-dirty"),
        },
        _ => "unknown".into(),
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Boards a bundle can be made for: every `board/*.toml` whose source is a camera, not a replay of files.
fn known_boards() -> Result<Vec<String>> {
    let directory = root().join("board");
    let mut boards = Vec::new();
    for entry in std::fs::read_dir(&directory).with_context(|| format!("listing {}", directory.display()))? {
        let path = entry?.path();
        let Some(name) =
            path.file_name().and_then(|name| name.to_str()).and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        let chain = inherit_chain(name)?;
        let source_kind = chain.iter().find_map(|(_, table)| {
            table.get("source").and_then(|source| source.get("kind")).and_then(|kind| kind.as_str())
        });
        if source_kind != Some("replay") {
            boards.push(name.to_string());
        }
    }
    boards.sort();
    Ok(boards)
}

/// The board's config file and the ones it inherits, child first, each as (file name, table).
fn inherit_chain(board: &str) -> Result<Vec<(String, toml::Table)>> {
    let mut chain: Vec<(String, toml::Table)> = Vec::new();
    let mut file = format!("{board}.toml");
    loop {
        ensure!(chain.len() < 8, "board/{board}.toml: `inherit` chain too long (a cycle?)");
        let path = root().join("board").join(&file);
        let table = read_toml(&path)?;
        let parent = match table.get("inherit") {
            None => None,
            Some(toml::Value::String(parent)) if is_plain_file_name(parent) => Some(parent.clone()),
            Some(other) => bail!("{}: `inherit = {other:?}` must name a file in board/", path.display()),
        };
        chain.push((file, table));
        match parent {
            Some(parent) => file = parent,
            None => return Ok(chain),
        }
    }
}

/// Every file of the bundle but the binary, by its path in the bundle. The board configs go to `board/` and
/// the models to `models/`, the same layout as this repository, so the configs' relative paths
/// (`../models/manifest.toml`) resolve inside the installed bundle; that is checked here.
fn bundle_files(board: &str) -> Result<BTreeMap<String, Source>> {
    let mut files = BTreeMap::new();
    let mut add = |bundle_path: String, path: PathBuf| -> Result<()> {
        ensure!(path.is_file(), "{} (for the bundle's {bundle_path}) is missing", path.display());
        files.insert(bundle_path, Source { path, mode: 0o644 });
        Ok(())
    };
    let chain = inherit_chain(board)?;
    // The model files the configs name (the child's key wins, as when the runtime merges them).
    let models_key = |key: &str| {
        chain.iter().find_map(|(_, table)| {
            table.get("models").and_then(|models| models.get(key)).and_then(|value| value.as_str())
        })
    };
    let mut named = BTreeMap::new();
    for key in ["manifest", "alignment"] {
        let value = models_key(key).with_context(|| format!("board/{board}.toml: no [models] {key}"))?;
        let bundle_path = bundle_relative(&format!("board/{value}")).with_context(|| {
            format!(
                "board/{board}.toml: [models] {key} = \"{value}\" must be a relative path inside the bundle"
            )
        })?;
        named.insert(key, bundle_path);
    }
    for (file, _) in &chain {
        add(format!("board/{file}"), root().join("board").join(file))?;
    }
    let manifest_path = &named["manifest"];
    let models_directory = Path::new(manifest_path).parent().unwrap_or(Path::new("")).to_path_buf();
    add(manifest_path.clone(), root().join(manifest_path))?;
    add(named["alignment"].clone(), root().join(&named["alignment"]))?;
    add(
        models_directory.join("CARD.md").display().to_string(),
        root().join(&models_directory).join("CARD.md"),
    )?;
    // Exactly the models the manifest lists, with the licence each names: nothing else in models/ (the
    // training pipeline, its virtual environment) travels.
    let manifest = read_toml(&root().join(manifest_path))?;
    let models = manifest
        .get("model")
        .and_then(|models| models.as_array())
        .with_context(|| format!("{manifest_path}: no [[model]] entries"))?;
    for model in models {
        for key in ["file", "licence_file"] {
            let file = model
                .get(key)
                .and_then(|value| value.as_str())
                .filter(|file| is_plain_file_name(file))
                .with_context(|| format!("{manifest_path}: a [[model]] has no plain file name in `{key}`"))?;
            let bundle_path = models_directory.join(file).display().to_string();
            add(bundle_path.clone(), root().join(&bundle_path))?;
        }
    }
    add(SERVICE.into(), root().join(SERVICE))?;
    Ok(files)
}

/// A path relative to the bundle root with `..` resolved, or None when it is absolute or leaves the bundle.
fn bundle_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse().with_context(|| format!("parsing {}", path.display()))
}

fn package_version() -> Result<String> {
    let manifest = read_toml(&root().join("Cargo.toml"))?;
    manifest
        .get("package")
        .and_then(|package| package.get("version"))
        .and_then(|version| version.as_str())
        .map(str::to_string)
        .context("Cargo.toml has no [package] version")
}

/// The mtime of every entry: `SOURCE_DATE_EPOCH` when set (the reproducible-builds convention), else the
/// last commit's time, so the same tree gives the same archive; 0 outside a git checkout.
fn source_date() -> Result<(u64, &'static str)> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        let seconds =
            value.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH `{value}` is not seconds"))?;
        return Ok((seconds, "from SOURCE_DATE_EPOCH"));
    }
    let commit_time = std::process::Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok());
    Ok(match commit_time {
        Some(seconds) => (seconds, "the last commit's time"),
        None => (0, "0: not a git checkout and no SOURCE_DATE_EPOCH"),
    })
}

/// Writes the archive: everything under one top directory `name/`, directories and files in sorted order,
/// owner root, fixed mtimes, then `SHA256SUMS` of every file. Written beside the target and renamed, so a
/// failure never leaves a half archive under the final name.
fn write_archive(archive: &Path, name: &str, files: &BTreeMap<String, Source>, mtime: u64) -> Result<()> {
    let partial = archive.with_extension("partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    // flate2's gzip header carries no file name and a zero mtime: nothing of the build machine leaks in.
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header
    };
    let mut directories: Vec<String> = vec![String::new()];
    for path in files.keys() {
        let mut ancestors: Vec<String> = Vec::new();
        let mut parent = Path::new(path).parent();
        while let Some(directory) = parent.filter(|directory| !directory.as_os_str().is_empty()) {
            ancestors.push(directory.display().to_string());
            parent = directory.parent();
        }
        directories.extend(ancestors);
    }
    directories.sort();
    directories.dedup();
    for directory in &directories {
        let path = if directory.is_empty() { format!("{name}/") } else { format!("{name}/{directory}/") };
        builder.append_data(&mut header(tar::EntryType::Directory, 0, 0o755), path, std::io::empty())?;
    }
    let mut sums = String::new();
    for (bundle_path, source) in files {
        let data =
            std::fs::read(&source.path).with_context(|| format!("reading {}", source.path.display()))?;
        sums.push_str(&format!("{}  {bundle_path}\n", hex(&Sha256::digest(&data))));
        let mut entry = header(tar::EntryType::Regular, data.len() as u64, source.mode);
        builder
            .append_data(&mut entry, format!("{name}/{bundle_path}"), data.as_slice())
            .with_context(|| format!("adding {bundle_path} to {}", partial.display()))?;
    }
    let mut entry = header(tar::EntryType::Regular, sums.len() as u64, 0o644);
    builder.append_data(&mut entry, format!("{name}/SHA256SUMS"), sums.as_bytes())?;
    let mut file = builder.into_inner()?.finish()?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&partial, archive)
        .with_context(|| format!("renaming {} to {}", partial.display(), archive.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_paths_stay_inside_the_bundle() {
        assert_eq!(bundle_relative("board/../models/manifest.toml").as_deref(), Some("models/manifest.toml"));
        assert_eq!(bundle_relative("board/./host.toml").as_deref(), Some("board/host.toml"));
        assert_eq!(bundle_relative("board/../../etc/passwd"), None);
        assert_eq!(bundle_relative("board//etc/manifest.toml").as_deref(), Some("board/etc/manifest.toml"));
        assert_eq!(bundle_relative("/etc/manifest.toml"), None);
    }

    /// Every board a bundle can be made for has every file it needs: its configs, the models its manifest
    /// lists with their licences, the card and the unit (checked without the cross build).
    #[test]
    fn every_known_board_bundles_the_models_its_manifest_lists() {
        let boards = known_boards().unwrap();
        assert!(boards.iter().any(|board| board == "jetson-orin-nano"), "{boards:?}");
        assert!(!boards.iter().any(|board| board == "host"), "host replays files no bundle carries");
        for board in boards {
            let files = bundle_files(&board).unwrap();
            for expected in [
                format!("board/{board}.toml"),
                "models/manifest.toml".into(),
                "models/alignment.toml".into(),
                "models/CARD.md".into(),
                "models/blazeface_front_128.onnx".into(),
                "models/LICENSE.blazeface".into(),
                "models/deepgate_student.onnx".into(),
                SERVICE.into(),
            ] {
                assert!(files.contains_key(&expected), "{board}: {expected} missing from {:?}", files.keys());
            }
            let onnx = files.keys().filter(|path| path.ends_with(".onnx")).count();
            let listed = std::fs::read_to_string(root().join("models/manifest.toml"))
                .unwrap()
                .matches("[[model]]")
                .count();
            assert_eq!(onnx, listed, "{board}: exactly the manifest's models");
        }
    }

    #[test]
    fn the_signature_covers_the_header_lines_and_a_bundle_is_never_unsigned_by_omission() {
        use ed25519_dalek::Verifier;
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let header = BundleHeader {
            file: "b.tar.gz".into(),
            bytes: b"archive",
            version: "0.1.0",
            commit: "abc",
            target: crate::setup::AARCH64,
            board: "jetson-orin-nano",
            created: 1,
        };
        let text = signature_text(&header, &key);
        assert_eq!(text, signature_text(&header, &key), "deterministic");
        // The same vector is verified by the runtime (src/update/mod.rs, `a_signature_made_by_xtask_dist_verifies`).
        assert!(text.ends_with("\nsignature = \"990acf846eea0b028e07c492b213543e8eac9a0d1c5c157fa60507f33b199adfb462868c0fe6ef46292ce8805ef0ae68cf5925d3d86e14602e0603417c324409\"\n"), "{text}");
        let (signed, line) = text.trim_end().rsplit_once('\n').unwrap();
        let digits = line.strip_prefix("signature = \"").and_then(|rest| rest.strip_suffix('"')).unwrap();
        let bytes: Vec<u8> =
            (0..64).map(|index| u8::from_str_radix(&digits[2 * index..2 * index + 2], 16).unwrap()).collect();
        let signature = ed25519_dalek::Signature::from_slice(&bytes).unwrap();
        let signed = format!("{signed}\n");
        key.verifying_key().verify(signed.as_bytes(), &signature).unwrap();
        assert!(signed.contains(&format!("sha256 = \"{}\"\n", hex(&Sha256::digest(b"archive")))), "{signed}");
        assert!(signed.contains("size = 7\n") && signed.contains("target = \"aarch64-unknown-linux-gnu\"\n"));

        let error = dist(&["--board".into(), "jetson-orin-nano".into()]).unwrap_err();
        assert!(error.to_string().contains("--signing-key FILE"), "{error}");
    }

    /// Two archives of the same files are the same bytes, and hold what `sha256sum -c` needs.
    #[test]
    fn the_archive_is_reproducible_and_carries_its_checksums() {
        let directory = std::env::temp_dir().join(format!("xtask-dist-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let mut files = bundle_files("jetson-orin-nano").unwrap();
        files.insert("bin/deepgate".into(), Source { path: root().join("Cargo.toml"), mode: 0o755 });
        let first = directory.join("first.tar.gz");
        let second = directory.join("second.tar.gz");
        write_archive(&first, "bundle", &files, 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_archive(&second, "bundle", &files, 1_700_000_000).unwrap();
        let bytes = std::fs::read(&first).unwrap();
        assert_eq!(bytes, std::fs::read(&second).unwrap(), "two builds of the same files differ");

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let mut modes = BTreeMap::new();
        let mut sums = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            assert!(path.starts_with("bundle/"), "{path}");
            assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
            modes.insert(path.clone(), entry.header().mode().unwrap());
            if path == "bundle/SHA256SUMS" {
                std::io::Read::read_to_string(&mut entry, &mut sums).unwrap();
            }
        }
        assert_eq!(modes["bundle/bin/deepgate"], 0o755);
        assert_eq!(modes["bundle/models/manifest.toml"], 0o644);
        assert_eq!(modes["bundle/bin/"], 0o755);
        for (bundle_path, source) in &files {
            let sum = hex(&Sha256::digest(std::fs::read(&source.path).unwrap()));
            assert!(
                sums.contains(&format!("{sum}  {bundle_path}\n")),
                "{bundle_path} not in SHA256SUMS:\n{sums}"
            );
        }
        assert_eq!(sums.lines().count(), files.len());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
