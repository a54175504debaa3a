//! What the guest boots into: busybox, the kernel modules in load order, the project's binaries with their
//! shared libraries, the models and fixtures, and `/init`, packed as a gzip-compressed newc cpio.

use super::cpio::Archive;
use super::debian::{output, Kernel};
use super::Arch;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where things sit inside the guest; tests/vm_guest.rs receives them through the environment.
pub const GUEST_ROOT: &str = "/deepgate";
pub const GUEST_MODULES: &str = "/modules";
/// The line `/init` prints after the test program ends; the host reads the exit status from it.
pub const STATUS_MARKER: &str = "vm-guest: test program exit status ";

/// vivid with one device that has one video capture node (/dev/video0) and nothing else: node_types bit 0 is
/// video capture; without it vivid also makes output, VBI, radio, SDR, touch and meta nodes.
const VIVID_ARGUMENTS: &str = "n_devs=1 node_types=0x1";

/// The applets `/init` and the guest tests call (insmod, rmmod, kill, sysfs writes through sh).
const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "insmod", "rmmod", "lsmod", "ls", "cat", "echo", "printf", "dd", "poweroff",
    "sleep", "uname", "dmesg", "grep", "cut", "kill", "ps", "mkdir", "head", "tail", "true", "false", "env",
    "free",
];

/// The `.ko` files (relative to the modules directory) that loading `wanted` takes, dependencies first, read
/// from depmod's modules.dep (`path: dependency dependency …`). Module names compare with `-` and `_` alike,
/// as the kernel does.
pub fn load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut dependencies: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((module, depends)) = line.split_once(':') else { continue };
        let module = module.trim();
        dependencies.insert(module, depends.split_whitespace().collect());
        by_name.insert(module_name(module), module);
    }
    fn visit<'a>(
        module: &'a str,
        dependencies: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(module) {
            return Ok(());
        }
        let depends = dependencies.get(module).with_context(|| format!("modules.dep lacks {module}"))?;
        for dependency in depends {
            visit(dependency, dependencies, seen, order)?;
        }
        order.push(module.to_string());
        Ok(())
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for name in wanted {
        let module = by_name
            .get(&name.replace('-', "_"))
            .with_context(|| format!("no module {name} in modules.dep"))?;
        visit(module, &dependencies, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// `kernel/drivers/…/videobuf2-v4l2.ko(.xz)` → `videobuf2_v4l2`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// `readelf -d` NEEDED entries and `readelf -l`'s interpreter of an ELF file (any architecture: GNU readelf
/// reads them all, and unlike `ldd` it runs nothing, so one way serves the x86_64 and the aarch64 guest).
fn elf_dependencies(file: &Path) -> Result<(Vec<String>, Option<String>)> {
    let path = file.to_string_lossy();
    let dynamic =
        output("readelf", &["-d", "-W", &path], None).context("readelf (Debian package `binutils`)")?;
    let program = output("readelf", &["-l", "-W", &path], None)?;
    Ok((parse_needed(&dynamic), parse_interpreter(&program)))
}

pub fn parse_needed(readelf_dynamic: &str) -> Vec<String> {
    readelf_dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| Some(line.split_once("Shared library: [")?.1.split(']').next()?.to_string()))
        .collect()
}

pub fn parse_interpreter(readelf_program: &str) -> Option<String> {
    let line = readelf_program.lines().find(|line| line.contains("Requesting program interpreter:"))?;
    Some(line.split_once(':')?.1.trim().trim_end_matches(']').trim().to_string())
}

/// Adds the shared libraries `binaries` need, transitively, at the guest paths the dynamic loader searches.
fn add_libraries(archive: &mut Archive, arch: Arch, binaries: &[PathBuf]) -> Result<Vec<String>> {
    let mut pending: Vec<PathBuf> = binaries.to_vec();
    let mut added = Vec::new();
    while let Some(file) = pending.pop() {
        let (needed, interpreter) = elf_dependencies(&file)?;
        if let Some(interpreter) = interpreter {
            if !archive.contains(&interpreter) {
                let host = arch.host_library_path(&interpreter)?;
                archive.file(&interpreter, &std::fs::canonicalize(&host)?)?;
                added.push(interpreter);
            }
        }
        for library in needed {
            let guest = format!("{}/{library}", arch.guest_library_directory());
            if archive.contains(&guest) {
                continue;
            }
            let host = arch
                .library_directories()
                .iter()
                .map(|directory| Path::new(directory).join(&library))
                .find(|path| path.exists())
                .with_context(|| {
                    format!(
                        "{library} (needed by {}) is in none of {:?}",
                        file.display(),
                        arch.library_directories()
                    )
                })?;
            let host = std::fs::canonicalize(&host)?;
            archive.file(&guest, &host)?;
            added.push(guest);
            pending.push(host);
        }
    }
    Ok(added)
}

/// A stripped copy of `binary` in `directory` (debug information is most of a debug build's size).
pub(crate) fn stripped(arch: Arch, binary: &Path, directory: &Path) -> Result<PathBuf> {
    let name = binary.file_name().context("binary has a name")?;
    let copy = directory.join(name);
    let strip = arch.strip();
    output(&strip, &["-o", &copy.to_string_lossy(), &binary.to_string_lossy()], None).with_context(|| {
        format!("{strip} {} (Debian package {})", binary.display(), arch.binutils_package())
    })?;
    Ok(copy)
}

/// What goes into one guest's initramfs.
pub struct Contents<'a> {
    pub arch: Arch,
    pub kernel: &'a Kernel,
    pub busybox: &'a Path,
    pub loopback: Option<&'a Path>,
    pub deepgate: &'a Path,
    pub guest_tests: &'a Path,
    /// Extra arguments for the guest test program (test name filters).
    pub test_arguments: &'a [String],
}

/// Builds `<directory>/initramfs.cpio.gz` and returns its path.
pub fn build(contents: &Contents, directory: &Path) -> Result<PathBuf> {
    let root = crate::ci::root();
    let mut archive = Archive::default();
    for directory in ["proc", "sys", "dev", "tmp", "run"] {
        archive.directory(directory);
    }
    archive.file("bin/busybox", contents.busybox)?;
    for applet in APPLETS {
        archive.symlink(&format!("bin/{applet}"), "busybox");
    }

    let modules_dep = std::fs::read_to_string(contents.kernel.modules.join("modules.dep"))?;
    let order = load_order(&modules_dep, &["vivid"])?;
    let mut loads = String::new();
    for (index, module) in order.iter().enumerate() {
        let name = module.rsplit('/').next().unwrap_or(module);
        if !name.ends_with(".ko") {
            bail!("{module} is compressed; the guest's busybox insmod loads plain .ko files");
        }
        let guest = format!("{GUEST_MODULES}/load/{index:02}-{name}");
        archive.file(&guest, &contents.kernel.modules.join(module))?;
        let arguments = if module_name(module) == "vivid" { VIVID_ARGUMENTS } else { "" };
        loads.push_str(&format!("insmod {guest} {arguments} || echo 'vm-guest: insmod {name} FAILED'\n"));
    }
    if let Some(loopback) = contents.loopback {
        archive.file(&format!("{GUEST_MODULES}/v4l2loopback.ko"), loopback)?;
    }

    let stripped_directory = directory.join("stripped");
    std::fs::create_dir_all(&stripped_directory)?;
    let deepgate = stripped(contents.arch, contents.deepgate, &stripped_directory)?;
    let guest_tests = stripped(contents.arch, contents.guest_tests, &stripped_directory)?;
    archive.file("bin/deepgate", &deepgate)?;
    archive.file("bin/vm_guest", &guest_tests)?;
    add_libraries(&mut archive, contents.arch, &[deepgate, guest_tests])?;

    // The runtime's data at the same relative places as in the repository, so board/host.toml's relative
    // paths (../models/…, ../tests/fixtures/…) hold in the guest.
    let mut data =
        vec!["board/host.toml".to_string(), "models/manifest.toml".into(), "models/alignment.toml".into()];
    let manifest = std::fs::read_to_string(root.join("models/manifest.toml"))?;
    for line in manifest.lines() {
        if let Some(file) = line.trim().strip_prefix("file = \"").and_then(|rest| rest.strip_suffix('"')) {
            data.push(format!("models/{file}"));
        }
    }
    for directory in ["tests/fixtures/faces", "tests/fixtures/scenes"] {
        for entry in std::fs::read_dir(root.join(directory))?.flatten() {
            data.push(format!("{directory}/{}", entry.file_name().to_string_lossy()));
        }
    }
    for file in data {
        archive.file(&format!("{GUEST_ROOT}/{file}"), &root.join(&file))?;
    }

    let init = init_script(contents, &loads);
    archive.bytes("init", init.into_bytes(), 0o755);

    let path = directory.join("initramfs.cpio.gz");
    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // Fast compression: the archive is rebuilt each run and the guest unpacks it once.
    let mut encoder =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    archive.write(&mut encoder)?;
    encoder.finish()?.into_inner().map_err(|error| error.into_error())?.sync_all()?;
    Ok(path)
}

/// `/init`: mounts, loads vivid, runs the guest tests one at a time (they load and unload modules) with their
/// output on the console (what deepgate printed is in the log even when a test passes), prints
/// the status line the host reads, and powers off; on x86_64 the status also leaves through isa-debug-exit.
fn init_script(contents: &Contents, loads: &str) -> String {
    let arguments: String = contents.test_arguments.iter().map(|argument| format!(" '{argument}'")).collect();
    let exit = if contents.arch == Arch::X86_64 {
        // isa-debug-exit at port 0xf4 (244): qemu exits with (value << 1) | 1.
        "printf \"\\\\$(printf %o $rc)\" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null\n"
    } else {
        ""
    };
    format!(
        "#!/bin/sh\n\
         export PATH=/bin HOME=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         echo \"vm-guest: up at $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs\"\n\
         {loads}\
         echo \"vm-guest: modules loaded at $(cut -d' ' -f1 /proc/uptime) s:\" /dev/video*\n\
         cd {GUEST_ROOT}\n\
         DEEPGATE_VM_GUEST=1 DEEPGATE_REQUIRE=vm DEEPGATE_BIN=/bin/deepgate DEEPGATE_VM_ROOT={GUEST_ROOT} \
         DEEPGATE_VM_MODULES={GUEST_MODULES} RUST_BACKTRACE=1 \
         /bin/vm_guest --test-threads=1 --nocapture{arguments}\n\
         rc=$?\n\
         echo \"vm-guest: tests ended at $(cut -d' ' -f1 /proc/uptime) s\"\n\
         echo \"{STATUS_MARKER}$rc\"\n\
         {exit}\
         poweroff -f\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_once_each() {
        let dep = "kernel/media/vivid.ko: kernel/media/v4l2-tpg.ko kernel/media/videobuf2-v4l2.ko kernel/media/videodev.ko kernel/mc.ko\n\
                   kernel/media/v4l2-tpg.ko:\n\
                   kernel/media/videobuf2-v4l2.ko: kernel/media/videodev.ko kernel/mc.ko\n\
                   kernel/media/videodev.ko: kernel/mc.ko\n\
                   kernel/mc.ko:\n\
                   kernel/other.ko:\n";
        let order = load_order(dep, &["vivid"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/media/v4l2-tpg.ko",
                "kernel/mc.ko",
                "kernel/media/videodev.ko",
                "kernel/media/videobuf2-v4l2.ko",
                "kernel/media/vivid.ko"
            ]
        );
        // Names compare with '-' and '_' alike; an unknown module is an error naming it.
        assert_eq!(load_order(dep, &["v4l2_tpg"]).unwrap(), ["kernel/media/v4l2-tpg.ko"]);
        assert!(load_order(dep, &["uvcvideo"]).unwrap_err().to_string().contains("uvcvideo"));
    }

    #[test]
    fn readelf_output_gives_libraries_and_interpreter() {
        let dynamic = " 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n \
                       0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
                       0x000000000000000c (INIT)               0x1000\n";
        assert_eq!(parse_needed(dynamic), ["libgcc_s.so.1", "libc.so.6"]);
        let program = "  INTERP         0x000318 0x0000000000000318\n      \
                       [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]\n";
        assert_eq!(parse_interpreter(program).as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
        assert_eq!(parse_interpreter("static"), None);
    }
}
