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

/// The candidate version in `apt-cache policy` output.
pub fn parse_candidate(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|version| !version.is_empty() && *version != "(none)")
        .map(String::from)
}

/// A package as apt names it for one architecture: `name:arch`.
fn qualified(name: &str, arch: &str) -> String {
    format!("{name}:{arch}")
}

/// The version apt would fetch of `name` for `arch` ("all" packages take the host's lists).
pub fn candidate(name: &str, arch: &str) -> Result<String> {
    let text = output("apt-cache", &["policy", &qualified(name, arch)], None)?;
    parse_candidate(&text).with_context(|| {
        format!("apt has no candidate for {name}:{arch}; run `apt-get update` (and check the package name)")
    })
}

/// Downloads `name` at `version` into `debs` unless it is there; returns the .deb's path. apt names the file
/// `name_version_arch.deb` with the epoch's colon written as `%3a`.
pub fn download(debs: &Path, name: &str, version: &str, arch: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(debs)?;
    let file_arch = deb_architecture(name, arch)?;
    let path = debs.join(format!("{name}_{}_{file_arch}.deb", version.replace(':', "%3a")));
    if path.exists() {
        return Ok(path);
    }
    eprintln!("vm-test: apt-get download {name}:{arch}={version}");
    output("apt-get", &["download", "-q", &format!("{}={version}", qualified(name, arch))], Some(debs))
        .with_context(|| format!("downloading Debian package {name} ({arch}, {version})"))?;
    if !path.exists() {
        bail!("apt-get download {name} did not leave {}", path.display());
    }
    // Older versions of the same package are not needed again.
    for entry in std::fs::read_dir(debs)?.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&format!("{name}_"))
            && file.ends_with(&format!("_{file_arch}.deb"))
            && entry.path() != path
        {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    Ok(path)
}

/// "all" packages (headers-common, v4l2loopback-dkms) are architecture-independent.
fn deb_architecture(name: &str, arch: &str) -> Result<String> {
    let text = output("apt-cache", &["show", "--no-all-versions", &qualified(name, arch)], None)?;
    text.lines()
        .find_map(|line| line.strip_prefix("Architecture:"))
        .map(|value| value.trim().to_string())
        .with_context(|| format!("apt-cache show {name}:{arch} names no architecture"))
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

/// The guest kernel: resolved from the meta-package, downloaded, unpacked and depmod'ed.
pub fn kernel(arch: Arch, cache: &Path) -> Result<Kernel> {
    let meta = format!("linux-image-{}", arch.debian());
    let text = output("apt-cache", &["depends", &qualified(&meta, arch.debian())], None)?;
    let package = parse_depends(&text, "linux-image-")
        .with_context(|| format!("`apt-cache depends {meta}` names no versioned kernel package"))?;
    let version = candidate(&package, arch.debian())?;
    let release = package.trim_start_matches("linux-image-").to_string();
    let directory = cache.join(arch.name()).join(format!("kernel-{release}_{version}"));
    let deb = download(&cache.join("debs"), &package, &version, arch.debian())?;
    let root = cached(&directory, "kernel-", |root| {
        unpack(&deb, root)?;
        output("depmod", &["-b", &root.to_string_lossy(), &release], None)
            .context("depmod (Debian package `kmod`)")?;
        Ok(())
    })?;
    let kernel = Kernel {
        vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
        modules: root.join(format!("lib/modules/{release}")),
        release,
        version,
    };
    if !kernel.vmlinuz.exists() || !kernel.modules.join("modules.dep").exists() {
        bail!("{} lacks boot/vmlinuz-{} or modules.dep", root.display(), kernel.release);
    }
    Ok(kernel)
}

/// A static busybox for the guest: the host's for amd64 (`busybox-static`), the arm64 package otherwise.
pub fn busybox(arch: Arch, cache: &Path) -> Result<PathBuf> {
    if arch == Arch::host() {
        let path = PathBuf::from("/bin/busybox");
        let kind = output("file", &["-L", "/bin/busybox"], None).unwrap_or_default();
        if !path.exists() || !kind.contains("statically linked") {
            bail!("no static /bin/busybox on the host: apt-get install busybox-static");
        }
        return Ok(path);
    }
    let version = candidate("busybox-static", arch.debian())?;
    let deb = download(&cache.join("debs"), "busybox-static", &version, arch.debian())?;
    let directory = cache.join(arch.name()).join(format!("busybox-{}", version.replace(':', "%3a")));
    let root = cached(&directory, "busybox-", |root| unpack(&deb, root))?;
    Ok(root.join("bin/busybox"))
}

/// v4l2loopback built from Debian's DKMS source against the guest kernel's headers. The headers packages
/// point at each other with absolute paths (`include /usr/src/linux-headers-…-common/Makefile`); they are
/// unpacked together into one private tree (their relative `scripts -> ../../lib/linux-kbuild-…` links then
/// resolve inside it) and the one absolute include is rewritten to the private copy. linux-kbuild is the
/// HOST's (its fixdep/modpost run here); for arm64 the compiler is Debian's cross gcc (`ARCH=arm64
/// CROSS_COMPILE=aarch64-linux-gnu-`; the headers ask for `gcc-12`, which gcc-aarch64-linux-gnu provides).
pub fn v4l2loopback(arch: Arch, kernel: &Kernel, cache: &Path) -> Result<PathBuf> {
    let debs = cache.join("debs");
    let host = Arch::host().debian();
    // Architecture-independent packages ("all") are asked for under the host's architecture.
    let source_version = candidate("v4l2loopback-dkms", host)?;
    let common =
        format!("linux-headers-{}-common", kernel.release.rsplit_once('-').map_or("", |(abi, _)| abi));
    let kbuild = format!("linux-kbuild-{}", kernel.release.split('.').take(2).collect::<Vec<_>>().join("."));
    let headers_name = format!("linux-headers-{}", kernel.release);
    let headers = cached(
        &cache.join(arch.name()).join(format!("headers-{}_{}", kernel.release, kernel.version)),
        "headers-",
        |root| {
            for (name, package_arch) in [(&headers_name, arch.debian()), (&common, host), (&kbuild, host)] {
                let deb = download(&debs, name, &candidate(name, package_arch)?, package_arch)?;
                unpack(&deb, root)?;
            }
            let makefile = root.join(format!("usr/src/{headers_name}/Makefile"));
            let private = root.join(format!("usr/src/{common}/Makefile"));
            std::fs::write(&makefile, format!("include {}\n", private.display()))
                .with_context(|| format!("rewriting {}", makefile.display()))?;
            Ok(())
        },
    )?;
    let key = format!("v4l2loopback-{source_version}_{}_{}", kernel.release, kernel.version);
    let built = cached(&cache.join(arch.name()).join(key), "v4l2loopback-", |directory| {
        let deb = download(&debs, "v4l2loopback-dkms", &source_version, host)?;
        let unpacked = directory.join("deb");
        unpack(&deb, &unpacked)?;
        let source = std::fs::read_dir(unpacked.join("usr/src"))?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("v4l2loopback"))
            })
            .context("v4l2loopback-dkms holds no usr/src/v4l2loopback-*")?;
        let tree = headers.join(format!("usr/src/{headers_name}"));
        let mut arguments = vec![
            "-C".to_string(),
            tree.display().to_string(),
            format!("M={}", source.display()),
            "modules".into(),
        ];
        if arch != Arch::host() {
            arguments.push(format!("ARCH={}", arch.kernel_arch()));
            arguments.push(format!("CROSS_COMPILE={}", arch.cross_prefix()));
        }
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        output("make", &arguments, None)
            .with_context(|| format!("building v4l2loopback for {}", kernel.release))?;
        std::fs::rename(source.join("v4l2loopback.ko"), directory.join("v4l2loopback.ko"))?;
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
    fn the_candidate_version_is_read_from_apt_cache_policy() {
        let policy = "busybox-static:\n  Installed: 1:1.35.0-4+b3\n  Candidate: 1:1.35.0-4+deb12u1+b1\n  \
                      Version table:\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("1:1.35.0-4+deb12u1+b1"));
        assert_eq!(parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"), None);
    }
}
