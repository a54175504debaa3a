//! `deepgate install`: a signed bundle into the inactive slot, the `current` link switched, the new version
//! started and, when it does not reach READY within the bound, the link switched back. In order:
//!
//! 1. the trusted key: the one pinned at `/etc/deepgate/update.pub`, or on a first install the `--trust-key`
//!    file (pinned once the bundle verified); a different key is refused, since changing the pin is a local
//!    act (replace that file), never something a bundle or a flag on a remote command line can do;
//! 2. the signature file's signature, then the archive's size and sha256 against the signed header, then every
//!    entry of the archive (in memory, `unpack::read`): nothing is written before all of it passed;
//! 3. the header: a target that runs here, the board's config and the binary present, no downgrade unless
//!    asked for;
//! 4. the inactive slot replaced (written under a temporary name, then renamed), the signature file kept in it;
//!    the links `bin`, `board`, `models` -> `current/…` made on the first install;
//! 5. `current` switched, then the readiness check (`ready`); not ready: `current` switched back (and the
//!    unit restarted on the old version), the failed slot left for inspection until the next install.
//!
//! The state directory (`/var/lib/deepgate`) and the site file (`/etc/deepgate/site.toml`) are never touched.

use super::ready::{self, Outcome};
use super::slots::{Layout, Slot};
use super::unpack::{self, Contents};
use super::Header;
use anyhow::{bail, ensure, Context, Result};
use ed25519_dalek::VerifyingKey;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `deepgate install` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The file system root the layout is under (`/` on a board).
    pub root: PathBuf,
    pub bundle: PathBuf,
    /// The signature file; default: the bundle's path with `.sig` appended.
    pub signature: Option<PathBuf>,
    /// A public key file to pin on a first install (or that must equal the pinned one).
    pub trust_key: Option<PathBuf>,
    pub allow_downgrade: bool,
    /// The board config the new version is started with: `board/<board>.toml` in the bundle; default: the
    /// board the signed header names.
    pub board: Option<String>,
    /// Restart this systemd unit instead of a trial run.
    pub restart_unit: Option<String>,
    /// How long the new version has to reach READY.
    pub ready_timeout: Duration,
}

/// How an install ended (a refusal is an error: then nothing was changed).
#[derive(Debug)]
pub enum Installed {
    /// The new version is current and reached READY.
    Ready { slot: Slot, header: Header, previous: Option<Header>, after: Duration, status: Option<String> },
    /// The new version did not reach READY; `current` is back on `restored` (None: nothing was installed
    /// before, and nothing is current now).
    RolledBack { slot: Slot, header: Header, restored: Option<Slot>, why: String, restart: Option<String> },
}

/// The signature file's default path: the bundle's with `.sig` appended.
pub fn default_signature(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Checks a bundle against `key` (signature, then archive, then every entry) and returns its header and
/// contents; writes nothing.
pub fn verify(bundle: &Path, signature: &Path, key: &VerifyingKey) -> Result<(Header, Contents, String)> {
    let signature_text =
        std::fs::read(signature).with_context(|| format!("reading the signature {}", signature.display()))?;
    let header = super::verify_signature(&signature_text, key, &signature.display().to_string())?;
    // Read whole, once: what is hashed is what is unpacked (no window for the file to change in between).
    let archive =
        std::fs::read(bundle).with_context(|| format!("reading the bundle {}", bundle.display()))?;
    let what = bundle.display().to_string();
    super::check_archive(&archive, &header, &what)?;
    let contents = unpack::read(&archive, &what)?;
    let signature_text = String::from_utf8(signature_text).context("the signature file is not UTF-8")?;
    Ok((header, contents, signature_text))
}

/// The key bundles must be signed with: the pinned one, or the `--trust-key` one on a first install; and
/// whether it still has to be pinned.
pub fn trusted_key(layout: &Layout, trust_key: Option<&Path>) -> Result<(VerifyingKey, bool)> {
    let offered = trust_key.map(super::read_public_key).transpose()?;
    if layout.pinned_key.exists() {
        let pinned = super::read_public_key(&layout.pinned_key)?;
        if let Some(offered) = offered {
            ensure!(
                offered == pinned,
                "{} pins another update key ({}); --trust-key does not replace it: changing the pinned key is a \
                 local act (replace that file as root), so that no remote command can",
                layout.pinned_key.display(),
                crate::hex::to_hex(pinned.as_bytes())
            );
        }
        return Ok((pinned, false));
    }
    match offered {
        Some(key) => Ok((key, true)),
        None => bail!(
            "no pinned update key at {}: the first install names it with --trust-key FILE (the release key's \
             public half, `deepgate audit public-key KEY`)",
            layout.pinned_key.display()
        ),
    }
}

/// Installs the bundle as `options` say. An error means nothing was changed (or, past the switch, that even
/// the rollback failed: the message says so).
pub fn install(options: &Options) -> Result<Installed> {
    let layout = Layout::new(&options.root);
    let (key, pin) = trusted_key(&layout, options.trust_key.as_deref())?;
    let signature = options.signature.clone().unwrap_or_else(|| default_signature(&options.bundle));
    let (header, contents, signature_text) = verify(&options.bundle, &signature, &key)?;
    ensure!(
        super::runs_here(&header.target),
        "the bundle is built for {}, which does not run on this {} machine",
        header.target,
        std::env::consts::ARCH
    );
    let board = options.board.clone().unwrap_or_else(|| header.board.clone());
    ensure!(
        !board.is_empty() && !board.contains('/') && board != "..",
        "`{board}` is not a board name (a file name in the bundle's board/ without .toml)"
    );
    let board_file = format!("board/{board}.toml");
    ensure!(contents.has_file("bin/deepgate"), "the bundle has no bin/deepgate");
    ensure!(contents.has_file(&board_file), "the bundle has no {board_file}");
    if let Some(unit) = &options.restart_unit {
        ready::check_unit_name(unit)?;
    }

    let _lock = layout.lock()?;
    let current = layout.current()?;
    layout.entry_links(false)?;
    let previous = current.map(|slot| layout.installed(slot)).transpose()?.flatten();
    if let Some(previous) = &previous {
        let (old, new) = (previous.semver()?, header.semver()?);
        ensure!(
            new >= old || options.allow_downgrade,
            "the bundle's version {new} is older than the installed {old}: refused (--allow-downgrade to install \
             it anyway)"
        );
    }
    if pin {
        pin_key(&layout, &key)?;
    }
    let slot = current.map_or(Slot::A, Slot::other);
    write_slot(&layout, slot, &contents, &signature_text)?;
    log::info!(
        "installed {} ({}, commit {}) into {}; switching current from {}",
        header.version,
        header.board,
        header.commit,
        layout.slot(slot).display(),
        current.map_or("nothing", Slot::name)
    );
    layout.entry_links(true)?;
    layout.switch(slot)?;

    let outcome = match &options.restart_unit {
        Some(unit) => ready::restart_unit(unit, options.ready_timeout)?,
        None => {
            let site = layout.site.exists().then_some(layout.site.as_path());
            // The paths the unit runs: /opt/deepgate/bin/deepgate, through the links and `current`.
            let binary = layout.base.join("bin/deepgate");
            ready::trial_run(&binary, &layout.base.join(&board_file), site, options.ready_timeout)?
        }
    };
    match outcome {
        Outcome::Ready { after, status } => Ok(Installed::Ready { slot, header, previous, after, status }),
        Outcome::NotReady(why) => {
            log::warn!("{} did not become ready: {why}; rolling back", header.version);
            match current {
                Some(old) => layout.switch(old).context("ROLLBACK FAILED: switching current back")?,
                None => layout.clear_current().context("ROLLBACK FAILED: removing current")?,
            }
            let restart = match (&options.restart_unit, current) {
                (Some(unit), Some(_)) => Some(match ready::restart_unit(unit, options.ready_timeout)? {
                    Outcome::Ready { .. } => format!("{unit} restarted on the previous version"),
                    Outcome::NotReady(why) => format!("the previous version did not come back either: {why}"),
                }),
                _ => None,
            };
            Ok(Installed::RolledBack { slot, header, restored: current, why, restart })
        }
    }
}

/// Replaces `slot` with `contents`: written beside it under a temporary name, the signature file added, then
/// renamed into place, so a slot is never half written under its own name.
fn write_slot(layout: &Layout, slot: Slot, contents: &Contents, signature_text: &str) -> Result<()> {
    let directory = layout.slot(slot);
    let partial = layout.base.join(format!(".{}.partial", slot.name()));
    for leftover in [&partial, &directory] {
        if leftover.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(leftover).with_context(|| format!("removing {}", leftover.display()))?;
        }
    }
    unpack::write(contents, &partial)?;
    let signature_path = partial.join(unpack::SIGNATURE_IN_SLOT);
    std::fs::write(&signature_path, signature_text)
        .and_then(|()| std::fs::File::open(&signature_path)?.sync_all())
        .with_context(|| format!("writing {}", signature_path.display()))?;
    std::fs::rename(&partial, &directory)
        .with_context(|| format!("renaming {} to {}", partial.display(), directory.display()))?;
    unpack::sync_directory(&layout.base)
}

/// Writes the pinned key (hex, mode 644: it is public) under a temporary name and renames it into place.
fn pin_key(layout: &Layout, key: &VerifyingKey) -> Result<()> {
    let directory = layout.pinned_key.parent().context("the pinned key's path has no directory")?;
    std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    let temporary = layout.pinned_key.with_extension("pub.new");
    std::fs::write(&temporary, format!("{}\n", crate::hex::to_hex(key.as_bytes())))
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &layout.pinned_key)
        .with_context(|| format!("renaming {} to {}", temporary.display(), layout.pinned_key.display()))?;
    log::info!(
        "pinned the update key {} at {}",
        crate::hex::to_hex(key.as_bytes()),
        layout.pinned_key.display()
    );
    unpack::sync_directory(directory)
}
