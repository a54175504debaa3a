//! The installed bundles on a board: two slots, `/opt/deepgate/a` and `/opt/deepgate/b`, and the symbolic link
//! `/opt/deepgate/current` naming the one the service runs. The link is switched atomically (a new link under
//! a temporary name renamed over the old one), so a power cut leaves either the old or the new slot current,
//! never neither. The paths the systemd unit and the board configs use, `/opt/deepgate/{bin,board,models}`, are
//! links through `current` (`bin -> current/bin`), so they move with it. Everything is under a root directory
//! (`/` on a board, a temporary directory in tests).

use super::Header;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The bundle's top-level directories, reached from `/opt/deepgate` through `current`.
pub const ENTRY_LINKS: [&str; 3] = ["bin", "board", "models"];

/// One of the two install slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The directory's name under `/opt/deepgate`, which is also the link's target.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The slot an update goes into while this one is current.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Where things are under one root.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `ROOT/opt/deepgate`: the slots, the `current` link and the install lock.
    pub base: PathBuf,
    /// `ROOT/etc/deepgate/update.pub`: the pinned public key updates must be signed with.
    pub pinned_key: PathBuf,
    /// `ROOT/etc/deepgate/site.toml`: the site override, never touched by an install.
    pub site: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            base: root.join("opt/deepgate"),
            pinned_key: root.join("etc/deepgate/update.pub"),
            site: root.join("etc/deepgate/site.toml"),
        }
    }

    /// The directory of `slot`.
    pub fn slot(&self, slot: Slot) -> PathBuf {
        self.base.join(slot.name())
    }

    /// The `current` link (what the unit's `ExecStart=` goes through).
    pub fn current_link(&self) -> PathBuf {
        self.base.join("current")
    }

    /// The slot `current` names, or None before the first install; anything else there is an error.
    pub fn current(&self) -> Result<Option<Slot>> {
        let link = self.current_link();
        let target = match std::fs::read_link(&link) {
            Ok(target) => target,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if link.symlink_metadata().is_ok() {
                    bail!("{} exists but is not a symbolic link: move it away", link.display());
                }
                return Ok(None);
            }
            Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
                bail!("{} exists but is not a symbolic link: move it away", link.display())
            }
            Err(error) => return Err(error).with_context(|| format!("reading {}", link.display())),
        };
        match target.to_str() {
            Some("a") => Ok(Some(Slot::A)),
            Some("b") => Ok(Some(Slot::B)),
            _ => bail!(
                "{} points to {}, not to `a` or `b`: not an A/B install",
                link.display(),
                target.display()
            ),
        }
    }

    /// The header of the bundle installed in `slot` (its signature was checked when it was installed), or
    /// None when the slot holds no signed bundle.
    pub fn installed(&self, slot: Slot) -> Result<Option<Header>> {
        let path = self.slot(slot).join(super::unpack::SIGNATURE_IN_SLOT);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let signed = text.rsplit_once("\nsignature = ").map_or(text.as_str(), |(signed, _)| signed);
        toml::from_str(signed)
            .map(Some)
            .with_context(|| format!("reading the installed header {}", path.display()))
    }

    /// Checks (`create` false) or makes (`create` true) the links `bin`, `board`, `models` -> `current/…`. A
    /// real directory there (a bundle unpacked by hand, the old way) is refused before anything is written:
    /// the unit would go on running it whatever `current` says.
    pub fn entry_links(&self, create: bool) -> Result<()> {
        for name in ENTRY_LINKS {
            let path = self.base.join(name);
            let target = format!("current/{name}");
            match std::fs::read_link(&path) {
                Ok(found) if found == Path::new(&target) => {}
                Ok(found) => bail!("{} points to {}, not to {target}: move it away", path.display(), found.display()),
                Err(_) if path.symlink_metadata().is_ok() => bail!(
                    "{} is not a link to {target} (a bundle unpacked by hand?): move {}/{{bin,board,models}} away \
                     first, the site file and the state directory stay where they are",
                    path.display(),
                    self.base.display()
                ),
                Err(_) if create => std::os::unix::fs::symlink(&target, &path)
                    .with_context(|| format!("creating the link {} -> {target}", path.display()))?,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Points `current` at `slot` atomically: a new link under a temporary name, renamed over `current`, the
    /// directory synced.
    pub fn switch(&self, slot: Slot) -> Result<()> {
        let temporary = self.base.join(".current.new");
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(slot.name(), &temporary)
            .with_context(|| format!("creating the link {}", temporary.display()))?;
        std::fs::rename(&temporary, self.current_link()).with_context(|| {
            format!("renaming {} over {}", temporary.display(), self.current_link().display())
        })?;
        super::unpack::sync_directory(&self.base)
    }

    /// Removes `current` (a first install that never became ready leaves nothing current).
    pub fn clear_current(&self) -> Result<()> {
        let link = self.current_link();
        std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        super::unpack::sync_directory(&self.base)
    }

    /// Takes the install lock (`.install.lock`, held until the returned file is dropped): two installs at
    /// once would write the same slot.
    pub fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.base).with_context(|| format!("creating {}", self.base.display()))?;
        let path = self.base.join(".install.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("another install holds {}: wait for it to end", path.display())
            }
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_switches_between_slots_and_refuses_what_it_did_not_make() {
        let root = crate::testing::scratch_dir("slots");
        let layout = Layout::new(&root);
        let _lock = layout.lock().unwrap();
        assert!(layout.lock().unwrap_err().to_string().contains("another install"));
        assert_eq!(layout.current().unwrap(), None);
        layout.entry_links(false).unwrap();
        layout.entry_links(true).unwrap();
        layout.entry_links(false).unwrap();
        assert_eq!(std::fs::read_link(layout.base.join("bin")).unwrap(), Path::new("current/bin"));
        layout.switch(Slot::A).unwrap();
        assert_eq!(layout.current().unwrap(), Some(Slot::A));
        layout.switch(Slot::A.other()).unwrap();
        assert_eq!(layout.current().unwrap(), Some(Slot::B));
        assert_eq!(std::fs::read_link(layout.current_link()).unwrap(), Path::new("b"));
        layout.clear_current().unwrap();
        std::os::unix::fs::symlink("/usr", layout.current_link()).unwrap();
        assert!(layout.current().unwrap_err().to_string().contains("not to `a` or `b`"));
        std::fs::remove_file(layout.current_link()).unwrap();
        std::fs::create_dir(layout.current_link()).unwrap();
        assert!(layout.current().unwrap_err().to_string().contains("not a symbolic link"));
        std::fs::remove_file(layout.base.join("models")).unwrap();
        std::fs::create_dir(layout.base.join("models")).unwrap();
        assert!(layout.entry_links(false).unwrap_err().to_string().contains("unpacked by hand"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
