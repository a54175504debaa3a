//! Debian packages for the guests, resolved with apt and cached by version: the kernel (+ depmod), its headers,
//! the v4l2loopback module built against them, and busybox.
//!
//! Nothing is installed on the host: packages are fetched with `apt-get download` and unpacked into the cache
//! with `dpkg-deb -x`. A directory is named by the package version it holds and is made under a temporary
//! name then renamed, so an interrupted run never leaves a half-made directory that looks complete, and a
//! security update (a new version) is fetched once while the current one is never fetched again.

use super::Arch;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An unpacked kernel package: what the guest boots and the modules it loads.
pub struct Kernel {
    /// `uname -r` of the guest, e.g. 6.1.0-56-amd64.
    pub release: String,
    /// The Debian package version, e.g. 6.1.192-2.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` with modules.dep made by depmod.
    pub modules: PathBuf,
}

/// Runs a command, failing with its standard error; returns its standard output.
pub fn output(program: &str, arguments: &[&str], directory: Option<&Path>) -> Result<String> {
    let mut command = Command::new(program);
    command.args(arguments);
    if let Some(directory) = directory {
        command.current_dir(directory);
    }
    let output = command.output().with_context(|| format!("starting `{program}`: is it installed?"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// apt knows the guest's architecture's packages: a foreign one (arm64 here) is added, and the lists
/// fetched, only when it is missing.
pub fn ensure_architecture(arch: Arch) -> Result<()> {
    let native = output("dpkg", &["--print-architecture"], None)?;
    if native.trim() == arch.debian() {
        return Ok(());
    }
    let foreign = output("dpkg", &["--print-foreign-architectures"], None)?;
    if !foreign.lines().any(|line| line.trim() == arch.debian()) {
        eprintln!("vm-test: adding the {} architecture to apt (dpkg --add-architecture)", arch.debian());
        output("dpkg", &["--add-architecture", arch.debian()], None)?;
        output("apt-get", &["update", "-qq"], None)?;
    }
    Ok(())
}

/// The versioned kernel package a meta-package (`linux-image-amd64`) depends on, from `apt-cache depends`.
pub fn parse_depends(text: &str, prefix: &str) -> Option<String> {
    text.lines().filter_map(|line| line.trim().strip_prefix("Depends:")).map(str::trim).find_map(|package| {
        let package = package.split(':').next().unwrap_or(package);
        (package.starts_with(prefix) && package[prefix.len()..].starts_with(|c: char| c.is_ascii_digit()))
            .then(|| package.to_string())
    })
}

/// A package as apt names it for one architecture: `name:arch`.
fn qualified(name: &str, arch: &str) -> String {
    format!("{name}:{arch}")
}

/// Candidate versions from `apt-cache policy A B …` output, in order: (package name without its architecture
/// qualifier, candidate). Each package's section starts at column 0 with `name:` or `name:arch:`.
pub fn parse_policy(text: &str) -> Vec<(String, Option<String>)> {
    let mut packages: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            let name = line.trim_end_matches(':').split(':').next().unwrap_or_default();
            packages.push((name.to_string(), None));
        } else if let (Some(version), Some(last)) =
            (line.trim().strip_prefix("Candidate:"), packages.last_mut())
        {
            let version = version.trim();
            last.1 = (!version.is_empty() && version != "(none)").then(|| version.to_string());
        }
    }
    packages
}

/// One Debian package at the version apt would fetch, for one architecture.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub arch: &'static str,
    pub version: String,
}

impl Package {
    /// The downloaded .deb, if it is there: apt names it `name_version_arch.deb` (arch "all" for
    /// architecture-independent packages) with the epoch's colon written as `%3a`.
    fn deb(&self, debs: &Path) -> Option<PathBuf> {
        let prefix = format!("{}_{}_", self.name, self.version.replace(':', "%3a"));
        std::fs::read_dir(debs).ok()?.flatten().map(|entry| entry.path()).find(|path| {
            path.file_name().is_some_and(|file| {
                let file = file.to_string_lossy();
                file.starts_with(&prefix) && file.ends_with(".deb")
            })
        })
    }
}

/// Everything one guest needs from Debian, resolved with two apt-cache calls (each parses all package lists:
/// with the lists of two architectures that is seconds, so calls are few).
pub struct Packages {
    /// `uname -r` of the guest kernel, e.g. 6.1.0-56-arm64.
    pub release: String,
    pub image: Package,
    pub headers: Package,
    pub headers_common: Package,
    pub kbuild: Package,
    pub loopback_source: Package,
    /// For a foreign guest only (the host's busybox-static serves its own architecture).
    pub busybox: Option<Package>,
}

pub fn resolve(arch: Arch) -> Result<Packages> {
    let meta = format!("linux-image-{}", arch.debian());
    let text = output("apt-cache", &["depends", &qualified(&meta, arch.debian())], None)?;
    let image = parse_depends(&text, "linux-image-")
        .with_context(|| format!("`apt-cache depends {meta}` names no versioned kernel package"))?;
    let release = image.trim_start_matches("linux-image-").to_string();
    // 6.1.0-56-arm64 → headers common to the ABI 6.1.0-56, kbuild of the 6.1 series.
    let abi = release.rsplit_once('-').map_or(release.as_str(), |(abi, _)| abi);
    let series = release.split('.').take(2).collect::<Vec<_>>().join(".");
    let host = Arch::host().debian();
    // Architecture-independent packages ("all") and host tools are asked for under the host's architecture.
    let mut wanted = vec![
        (image, arch.debian()),
        (format!("linux-headers-{release}"), arch.debian()),
        (format!("linux-headers-{abi}-common"), host),
        (format!("linux-kbuild-{series}"), host),
        ("v4l2loopback-dkms".to_string(), host),
    ];
    if arch != Arch::host() {
        wanted.push(("busybox-static".to_string(), arch.debian()));
    }
    let names: Vec<String> = wanted.iter().map(|(name, arch)| qualified(name, arch)).collect();
    let mut arguments = vec!["policy"];
    arguments.extend(names.iter().map(String::as_str));
    let policy = parse_policy(&output("apt-cache", &arguments, None)?);
    let mut packages = wanted.into_iter().map(|(name, package_arch)| {
        let version =
            policy.iter().find(|(found, _)| *found == name).and_then(|(_, version)| version.clone());
        let version = version.with_context(|| {
            format!(
                "apt has no candidate for {name}:{package_arch}: run `apt-get update` (is the name right?)"
            )
        })?;
        Ok(Package { name, arch: package_arch, version })
    });
    let mut next = || packages.next().context("resolved package").and_then(|package| package);
    Ok(Packages {
        release,
        image: next()?,
        headers: next()?,
        headers_common: next()?,
        kbuild: next()?,
        loopback_source: next()?,
        busybox: if arch != Arch::host() { Some(next()?) } else { None },
    })
}

/// Downloads the packages not yet in `debs` (one `apt-get download` for all of them) and removes older
/// versions of the same packages; returns their paths in order.
pub fn fetch(debs: &Path, packages: &[&Package]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(debs)?;
    let missing: Vec<String> = packages
        .iter()
        .filter(|package| package.deb(debs).is_none())
        .map(|package| format!("{}={}", qualified(&package.name, package.arch), package.version))
        .collect();
    if !missing.is_empty() {
        eprintln!("vm-test: apt-get download {}", missing.join(" "));
        let mut arguments = vec!["download", "-q"];
        arguments.extend(missing.iter().map(String::as_str));
        output("apt-get", &arguments, Some(debs)).context("downloading Debian packages")?;
    }
    let mut paths = Vec::new();
    for package in packages {
        let path = package.deb(debs).with_context(|| {
            format!("apt-get download left no {}_{} in {}", package.name, package.version, debs.display())
        })?;
        for entry in std::fs::read_dir(debs)?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{}_", package.name)) && entry.path() != path {
                std::fs::remove_file(entry.path()).ok();
            }
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Makes `final_path` with `make` (given a fresh temporary directory) unless it exists; removes siblings
/// that start with `stale_prefix` (older versions of the same thing).
fn cached(final_path: &Path, stale_prefix: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    if final_path.exists() {
        return Ok(final_path.to_path_buf());
    }
    let parent = final_path.parent().context("cache path has a parent")?;
    std::fs::create_dir_all(parent)?;
    let temporary =
        parent.join(format!(".partial-{}", final_path.file_name().unwrap_or_default().to_string_lossy()));
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary)?;
    }
    std::fs::create_dir_all(&temporary)?;
    make(&temporary)?;
    for entry in std::fs::read_dir(parent)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(stale_prefix) {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
    std::fs::rename(&temporary, final_path)?;
    Ok(final_path.to_path_buf())
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    output("dpkg-deb", &["-x", &deb.to_string_lossy(), &into.to_string_lossy()], None)
        .with_context(|| format!("unpacking {}", deb.display()))?;
    Ok(())
}

/// The guest kernel, unpacked and depmod'ed.
pub fn kernel(arch: Arch, packages: &Packages, cache: &Path) -> Result<Kernel> {
    let (release, version) = (&packages.release, &packages.image.version);
    let [deb] = &fetch(&cache.join("debs"), &[&packages.image])?[..] else { unreachable!("one package") };
    let directory = cache.join(arch.name()).join(format!("kernel-{release}_{version}"));
    let root = cached(&directory, "kernel-", |root| {
        unpack(deb, root)?;
        output("depmod", &["-b", &root.to_string_lossy(), release], None)
            .context("depmod (Debian package `kmod`)")?;
        Ok(())
    })?;
    let kernel = Kernel {
        vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
        modules: root.join(format!("lib/modules/{release}")),
        release: release.clone(),
        version: version.clone(),
    };
    if !kernel.vmlinuz.exists() || !kernel.modules.join("modules.dep").exists() {
        bail!("{} lacks boot/vmlinuz-{release} or modules.dep", root.display());
    }
    Ok(kernel)
}

/// A static busybox for the guest: the host's for its own architecture (`busybox-static`), the foreign
/// architecture's package otherwise.
pub fn busybox(arch: Arch, packages: &Packages, cache: &Path) -> Result<PathBuf> {
    let Some(package) = &packages.busybox else {
        let kind = output("file", &["-L", "/bin/busybox"], None).unwrap_or_default();
        if !kind.contains("statically linked") {
            bail!("no static /bin/busybox on the host: apt-get install busybox-static");
        }
        return Ok(PathBuf::from("/bin/busybox"));
    };
    let [deb] = &fetch(&cache.join("debs"), &[package])?[..] else { unreachable!("one package") };
    let directory = cache.join(arch.name()).join(format!("busybox-{}", package.version.replace(':', "%3a")));
    let root = cached(&directory, "busybox-", |root| unpack(deb, root))?;
    Ok(root.join("bin/busybox"))
}

/// v4l2loopback built from Debian's DKMS source against the guest kernel's headers. The headers packages
/// point at each other with absolute paths (`include /usr/src/linux-headers-…-common/Makefile`); they are
/// unpacked together into one private tree (their relative `scripts -> ../../lib/linux-kbuild-…` links then
/// resolve inside it) and the one absolute include is rewritten to a relative one. linux-kbuild is the
/// HOST's (its fixdep/modpost run here); for arm64 the compiler is Debian's cross gcc (`ARCH=arm64
/// CROSS_COMPILE=aarch64-linux-gnu-`; the headers ask for `gcc-12`, which gcc-aarch64-linux-gnu provides).
pub fn v4l2loopback(arch: Arch, packages: &Packages, kernel: &Kernel, cache: &Path) -> Result<PathBuf> {
    let debs = cache.join("debs");
    let headers_name = &packages.headers.name;
    let headers = cached(
        &cache.join(arch.name()).join(format!("headers-{}_{}", kernel.release, packages.headers.version)),
        "headers-",
        |root| {
            let parts = [&packages.headers, &packages.headers_common, &packages.kbuild];
            for deb in fetch(&debs, &parts)? {
                unpack(&deb, root)?;
            }
            // Relative to the headers directory, where `make -C` runs: the tree is made under a temporary
            // name and renamed, so no absolute path into it would stay right.
            let makefile = root.join(format!("usr/src/{headers_name}/Makefile"));
            std::fs::write(&makefile, format!("include ../{}/Makefile\n", packages.headers_common.name))
                .with_context(|| format!("rewriting {}", makefile.display()))?;
            Ok(())
        },
    )?;
    let source = &packages.loopback_source;
    let key = format!("v4l2loopback-{}_{}_{}", source.version, kernel.release, kernel.version);
    let built = cached(&cache.join(arch.name()).join(key), "v4l2loopback-", |directory| {
        let [deb] = &fetch(&debs, &[source])?[..] else { unreachable!("one package") };
        let unpacked = directory.join("deb");
        unpack(deb, &unpacked)?;
        let tree = std::fs::read_dir(unpacked.join("usr/src"))?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("v4l2loopback"))
            })
            .context("v4l2loopback-dkms holds no usr/src/v4l2loopback-*")?;
        let headers_tree = headers.join(format!("usr/src/{headers_name}"));
        let mut arguments = vec![
            "-C".to_string(),
            headers_tree.display().to_string(),
            format!("M={}", tree.display()),
            "modules".into(),
        ];
        if arch != Arch::host() {
            arguments.push(format!("ARCH={}", arch.kernel_arch()));
            arguments.push(format!("CROSS_COMPILE={}", arch.cross_prefix()));
        }
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        output("make", &arguments, None)
            .with_context(|| format!("building v4l2loopback for {}", kernel.release))?;
        std::fs::rename(tree.join("v4l2loopback.ko"), directory.join("v4l2loopback.ko"))?;
        std::fs::remove_dir_all(&unpacked)?;
        Ok(())
    })?;
    Ok(built.join("v4l2loopback.ko"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_kernel_is_found_in_apt_cache_depends() {
        let amd64 = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(amd64, "linux-image-").as_deref(), Some("linux-image-6.1.0-56-amd64"));
        let arm64 = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-56-arm64:arm64\n  Recommends: x\n";
        assert_eq!(parse_depends(arm64, "linux-image-").as_deref(), Some("linux-image-6.1.0-56-arm64"));
        // A meta-package that first depends on something else (firmware, an unversioned name) is skipped past.
        let other = "m\n  Depends: linux-image-cloud\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(parse_depends(other, "linux-image-").as_deref(), Some("linux-image-6.1.0-57-cloud-amd64"));
        assert_eq!(parse_depends("m\n  Recommends: linux-image-6.1.0-1-amd64\n", "linux-image-"), None);
    }

    #[test]
    fn candidate_versions_are_read_from_apt_cache_policy() {
        let policy = "linux-image-6.1.0-56-arm64:arm64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  \
                      Version table:\n     6.1.192-2 500\n        500 http://deb.debian.org/debian-security \
                      bookworm-security/main arm64 Packages\n\
                      busybox-static:arm64:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n\
                      v4l2loopback-dkms:\n  Installed: (none)\n  Candidate: (none)\n";
        assert_eq!(
            parse_policy(policy),
            [
                ("linux-image-6.1.0-56-arm64".to_string(), Some("6.1.192-2".to_string())),
                ("busybox-static".to_string(), Some("1:1.35.0-4+deb12u1+b1".to_string())),
                ("v4l2loopback-dkms".to_string(), None),
            ]
        );
    }
}
