//! The TCP gate's spool: verdict lines waiting for the controller's acknowledgement, held in memory and in one
//! append-only file, so that they survive a controller outage and a runtime restart.
//!
//! # File format
//!
//! Integers are little-endian. The file opens with a 20-byte header: the magic `DGSPOOL1`, `next_id` (u64: no
//! id below it may be given out any more) and the CRC-32 of those 16 bytes. Records follow, each framed as
//!
//! ```text
//! crc32 u32 | length u32 | kind u8 | id u64 | payload (length bytes)
//! ```
//!
//! where the CRC-32 covers everything after it, length to payload. Kind 1 is a verdict: `id` is its id and the
//! payload its JSON line (an object, no newline). Kind 2 is a removal, without payload: every verdict with an
//! id ≤ `id` left the spool (acknowledged by the controller, or dropped because the spool was full).
//!
//! # Ids
//!
//! Ids start at 1 and only grow. The next id is one above the highest the file has held (a verdict, a removal,
//! or the header's `next_id`, which a rewrite carries over), so an id is never given twice, also after the
//! spool was emptied and rewritten: a controller can discard any id it has already acted on.
//!
//! # Durability and recovery
//!
//! Every change is one positioned write followed by `fdatasync`, made under the caller's lock: an append (with
//! the removal of the oldest verdict when the spool is full, in the same write), or a removal after an
//! acknowledgement. So a crash or power cut can tear at most one write, at the end of the file. On open, a
//! record that is incomplete or fails its checksum within the last [`MAX_WRITE_BYTES`] of the file is that torn
//! write: it and whatever follows are cut off, counted in [`Recovery`] and logged (a verdict in it was never
//! reported as stored). A bad record earlier than that cannot come from a torn write, only from the medium or
//! from someone editing the file: opening fails, naming the file and the offset, and leaves the file alone for
//! inspection. Moving it aside starts an empty spool whose ids begin at 1 again, which a controller that
//! remembers ids must be told about.
//!
//! A write that fails is undone (the file is cut back to where it was) and the change is not made in memory;
//! if even that fails, the spool refuses every later write until the runtime is restarted, which recovers it.
//!
//! # Bound and compaction
//!
//! At most `capacity` verdicts are kept; appending to a full spool drops the oldest (the caller counts and
//! logs it). Removed verdicts stay in the file until their bytes reach both the live ones and 64 KiB; then the
//! live verdicts are written to `<spool>.tmp`, synced, renamed over the spool, and the directory is synced, so
//! the file on disk always holds either the old or the new content. The file thus never exceeds about twice
//! `capacity` records of [`MAX_LINE`] bytes plus 64 KiB (17 MiB at the largest capacity).
//!
//! The file is locked (`flock`) while open: a second runtime on the same spool is refused.
//!
//! Reading a file back is `recovery`; framing a record, the lock and durable rewrites are `file`.

mod file;
mod recovery;

use super::{Line, MAX_LINE};
use anyhow::{anyhow, bail, ensure, Context, Result};
use file::{encode, install, lock, record_bytes, write_file};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The largest capacity `open` accepts: 4096 lines of up to 2 KiB is 8 MiB in memory, allocated once.
pub const MAX_CAPACITY: usize = 4096;
const MAGIC: [u8; 8] = *b"DGSPOOL1";
const HEADER_BYTES: u64 = 20;
/// crc32, length, kind, id.
const RECORD_HEADER_BYTES: usize = 17;
const VERDICT: u8 = 1;
const REMOVAL: u8 = 2;
/// The largest single write: a removal and a verdict of the longest line. A bad record this close to the end
/// of the file is a torn write; farther from it, corruption.
pub const MAX_WRITE_BYTES: usize = 2 * RECORD_HEADER_BYTES + MAX_LINE;
/// Removed bytes below this are never compacted away: rewriting the file for a few records is not worth it.
const COMPACT_MIN_BYTES: u64 = 64 * 1024;

/// One verdict waiting for its acknowledgement.
pub struct Record {
    pub id: u64,
    pub line: Line,
}

/// What `open` found in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Verdicts found waiting, including any dropped below.
    pub records: usize,
    /// Bytes of a torn write cut off the end of the file (0: it ended cleanly).
    pub torn_bytes: u64,
    /// Oldest verdicts dropped because the file held more than the capacity (after the capacity was lowered).
    pub dropped: u64,
}

/// The outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The id the verdict was stored under.
    pub id: u64,
    /// The id of the oldest verdict, dropped to make room.
    pub dropped: Option<u64>,
}

/// The verdicts waiting, in id order, and their file.
pub struct Spool {
    path: PathBuf,
    temporary: PathBuf,
    file: File,
    records: VecDeque<Record>,
    capacity: usize,
    next_id: u64,
    /// Bytes of the file in use (header and records): the next write goes here.
    length: u64,
    /// Bytes of the records in `records`; the rest past the header is removed verdicts and removals.
    live_bytes: u64,
    /// Scratch for encoding one write, allocated once.
    buffer: Vec<u8>,
    /// A failed write could not be undone, so where the file ends is unknown: nothing more is written.
    broken: bool,
    recovery: Recovery,
}

impl Spool {
    /// Opens the spool at `path`, creating it (with ids from 1) if it does not exist, locks it, and recovers
    /// what it holds (see the module documentation). The directory must exist.
    pub fn open(path: &Path, capacity: usize) -> Result<Spool> {
        ensure!(
            (1..=MAX_CAPACITY).contains(&capacity),
            "gate spool capacity {capacity} must be 1 to {MAX_CAPACITY} verdicts"
        );
        let Some(name) = path.file_name() else { bail!("gate spool {} must name a file", path.display()) };
        let mut temporary_name = name.to_os_string();
        temporary_name.push(".tmp");
        let temporary = path.with_file_name(temporary_name);
        let mut buffer = Vec::with_capacity(MAX_WRITE_BYTES);
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => {
                lock(&file, path)?;
                file
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {
                // Created whole through a temporary file, so that a spool file always has its header.
                let created = write_file(&temporary, 1, [].iter(), &mut buffer)
                    .and_then(|(file, _)| install(&temporary, path).map(|()| file))
                    .with_context(|| {
                        format!("creating gate spool {} (does its directory exist?)", path.display())
                    })?;
                log::info!("gate spool {}: created", path.display());
                created
            }
            Err(error) => {
                return Err(error).with_context(|| format!("opening gate spool {}", path.display()))
            }
        };
        // Left by a rewrite that a crash cut short; the spool itself is whole, so nothing in it is needed.
        match std::fs::remove_file(&temporary) {
            Ok(()) => log::warn!("gate spool {}: removed an unfinished rewrite", path.display()),
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("removing {}", temporary.display()));
            }
        }
        let mut spool = Spool {
            path: path.to_path_buf(),
            temporary,
            file,
            records: VecDeque::with_capacity(capacity),
            capacity,
            next_id: 1,
            length: HEADER_BYTES,
            live_bytes: 0,
            buffer,
            broken: false,
            recovery: Recovery::default(),
        };
        spool.recover()?;
        Ok(spool)
    }

    /// Stores `line` (a JSON object without newline) under the next id and syncs it to disk; when the spool is
    /// full, the oldest verdict is dropped in the same write. On error nothing changed.
    pub fn append(&mut self, line: &[u8]) -> Result<Appended> {
        ensure!(
            !self.broken,
            "gate spool {} is unusable after a failed write; restart to recover it",
            self.path.display()
        );
        ensure!(
            line.len() <= MAX_LINE
                && line.first() == Some(&b'{')
                && line.last() == Some(&b'}')
                && !line.contains(&b'\n'),
            "gate spool {}: a verdict line must be a JSON object of at most {MAX_LINE} bytes without newline",
            self.path.display()
        );
        let id = self.next_id;
        let next_id = id.checked_add(1).context("gate spool ids exhausted")?;
        let oldest = if self.records.len() >= self.capacity {
            self.records.front().map(|record| record.id)
        } else {
            None
        };
        self.buffer.clear();
        if let Some(oldest) = oldest {
            encode(&mut self.buffer, REMOVAL, oldest, &[]);
        }
        encode(&mut self.buffer, VERDICT, id, line);
        let line = Line::from_slice(line).map_err(|()| anyhow!("line longer than {MAX_LINE} bytes"))?;
        self.write_buffer()?;
        if oldest.is_some() {
            self.pop_front();
        }
        // Never beyond the capacity allocated at open: a full spool lost its oldest just above.
        self.records.push_back(Record { id, line });
        self.live_bytes += record_bytes(self.records.back().map_or(0, |record| record.line.len()));
        self.next_id = next_id;
        if oldest.is_some() {
            self.compact_if_due();
        }
        Ok(Appended { id, dropped: oldest })
    }

    /// Removes every verdict with an id ≤ `through` (acknowledged) and returns how many there were. They leave
    /// memory even if recording that on disk fails (logged): the file then still holds them, so after a
    /// restart they are sent again, with the same ids, which a controller discards.
    pub fn remove_through(&mut self, through: u64) -> usize {
        let mut removed = 0;
        let mut last = 0;
        while let Some(front) = self.records.front() {
            if front.id > through {
                break;
            }
            last = front.id;
            self.pop_front();
            removed += 1;
        }
        if removed > 0 && !self.broken {
            self.buffer.clear();
            encode(&mut self.buffer, REMOVAL, last, &[]);
            match self.write_buffer() {
                Ok(()) => self.compact_if_due(),
                Err(error) => log::error!(
                    "{error:#}; after a restart, verdicts up to id {last} are sent again with their ids"
                ),
            }
        }
        removed
    }

    /// Rewrites the file with only the waiting verdicts (see the module documentation).
    pub fn compact(&mut self) -> Result<()> {
        ensure!(
            !self.broken,
            "gate spool {} is unusable after a failed write; restart to recover it",
            self.path.display()
        );
        let (file, length) = write_file(&self.temporary, self.next_id, self.records.iter(), &mut self.buffer)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&self.temporary);
            })?;
        install(&self.temporary, &self.path)?;
        // The old file's lock goes with it; the new one was locked before it took the spool's name.
        self.file = file;
        self.length = length;
        Ok(())
    }

    /// The waiting verdicts, oldest first.
    pub fn records(&self) -> &VecDeque<Record> {
        &self.records
    }

    /// The oldest waiting verdict with an id above `id`.
    pub fn first_after(&self, id: u64) -> Option<&Record> {
        self.records.get(self.records.partition_point(|record| record.id <= id))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The id the next append gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the spool file.
    pub fn file_bytes(&self) -> u64 {
        self.length
    }

    fn pop_front(&mut self) {
        if let Some(record) = self.records.pop_front() {
            self.live_bytes -= record_bytes(record.line.len());
        }
    }

    fn compact_if_due(&mut self) {
        let dead = self.length - HEADER_BYTES - self.live_bytes;
        if dead >= COMPACT_MIN_BYTES && dead >= self.live_bytes {
            if let Err(error) = self.compact() {
                log::warn!("{error:#}; the spool keeps its removed records until the next try");
            }
        }
    }

    /// Writes `buffer` at the end of the file and syncs it; on failure, cuts the file back to where it was.
    fn write_buffer(&mut self) -> Result<()> {
        let written = self.file.write_all_at(&self.buffer, self.length).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.length += self.buffer.len() as u64;
                Ok(())
            }
            Err(error) => {
                if let Err(undo) = self.file.set_len(self.length).and_then(|()| self.file.sync_data()) {
                    self.broken = true;
                    log::error!(
                        "gate spool {}: cannot undo a failed write ({undo}); no more writes until a restart",
                        self.path.display()
                    );
                }
                Err(anyhow!(error).context(format!("writing gate spool {}", self.path.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift;

    /// A fresh directory for one test, and the spool path in it.
    fn scratch(name: &str) -> PathBuf {
        crate::testing::scratch_dir(&format!("spool-{name}")).join("gate.spool")
    }

    /// A verdict-like JSON line for `index`, padded to about `size` bytes.
    fn line(index: u64, size: usize) -> Vec<u8> {
        let text = format!("{{\"type\":\"verdict\",\"index\":{index},\"reason\":\"");
        let padding = size.saturating_sub(text.len() + 2);
        format!("{text}{}\"}}", "x".repeat(padding)).into_bytes()
    }

    fn ids(spool: &Spool) -> Vec<u64> {
        spool.records().iter().map(|record| record.id).collect()
    }

    fn error_of(path: &Path, capacity: usize) -> String {
        match Spool::open(path, capacity) {
            Ok(spool) => panic!("opened, holding ids {:?}", ids(&spool)),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn appended_verdicts_come_back_in_order_with_their_ids_after_a_reopen() {
        let path = scratch("reopen");
        let mut spool = Spool::open(&path, 16).unwrap();
        for index in 1..=5 {
            assert_eq!(spool.append(&line(index, 100)).unwrap(), Appended { id: index, dropped: None });
        }
        assert_eq!(spool.remove_through(2), 2);
        drop(spool);

        let mut spool = Spool::open(&path, 16).unwrap();
        assert_eq!(ids(&spool), [3, 4, 5]);
        for record in spool.records() {
            assert_eq!(record.line.as_slice(), line(record.id, 100).as_slice());
        }
        assert_eq!(spool.recovery(), Recovery { records: 3, torn_bytes: 0, dropped: 0 });
        assert_eq!(spool.first_after(0).map(|record| record.id), Some(3));
        assert_eq!(spool.first_after(3).map(|record| record.id), Some(4));
        assert!(spool.first_after(5).is_none());
        assert_eq!(spool.append(&line(6, 100)).unwrap().id, 6);
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_cut_off_and_counted() {
        let path = scratch("cut");
        let mut spool = Spool::open(&path, 16).unwrap();
        for index in 1..=3 {
            spool.append(&line(index, 200)).unwrap();
        }
        drop(spool);
        let size = std::fs::metadata(&path).unwrap().len();
        // As if the power went mid-write: the last record lacks its final 5 bytes.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(size - 5).unwrap();

        let mut spool = Spool::open(&path, 16).unwrap();
        assert_eq!(ids(&spool), [1, 2]);
        assert_eq!(spool.recovery().torn_bytes, record_bytes(200) - 5);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            size - record_bytes(200),
            "the torn end is cut off"
        );
        // Id 3 was never stored (its sync did not complete), so it was never sent either: it is given again.
        assert_eq!(spool.append(&line(3, 50)).unwrap().id, 3);
        drop(spool);
        let spool = Spool::open(&path, 16).unwrap();
        assert_eq!(ids(&spool), [1, 2, 3]);
        assert_eq!(spool.recovery().torn_bytes, 0);
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_is_cut_off_and_counted() {
        let path = scratch("flip-last");
        let mut spool = Spool::open(&path, 16).unwrap();
        for index in 1..=3 {
            spool.append(&line(index, 200)).unwrap();
        }
        drop(spool);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let spool = Spool::open(&path, 16).unwrap();
        assert_eq!(ids(&spool), [1, 2]);
        assert_eq!(spool.records()[1].line.as_slice(), line(2, 200).as_slice(), "earlier records intact");
        assert_eq!(spool.recovery().torn_bytes, record_bytes(200));
        assert_eq!(spool.next_id(), 3);
    }

    #[test]
    fn a_zero_filled_end_is_a_torn_write() {
        // Some file systems extend a file whose data never reached the disk with zeros.
        let path = scratch("zeros");
        let mut spool = Spool::open(&path, 16).unwrap();
        spool.append(&line(1, 100)).unwrap();
        drop(spool);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 300]);
        std::fs::write(&path, &bytes).unwrap();
        let spool = Spool::open(&path, 16).unwrap();
        assert_eq!(ids(&spool), [1]);
        assert_eq!(spool.recovery().torn_bytes, 300);
    }

    #[test]
    fn corruption_before_the_last_write_names_the_file_and_the_offset_and_leaves_the_file() {
        let path = scratch("flip-middle");
        let mut spool = Spool::open(&path, 16).unwrap();
        for index in 1..=10 {
            spool.append(&line(index, 500)).unwrap();
        }
        drop(spool);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_BYTES + record_bytes(500);
        bytes[second as usize + 30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();

        let message = error_of(&path, 16);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("checksum mismatch at offset {second}")), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is left for inspection");
    }

    #[test]
    fn ids_continue_after_a_restart_when_the_spool_was_emptied() {
        let path = scratch("ids");
        let mut spool = Spool::open(&path, 16).unwrap();
        for index in 1..=3 {
            spool.append(&line(index, 100)).unwrap();
        }
        assert_eq!(spool.remove_through(3), 3);
        drop(spool);
        let mut spool = Spool::open(&path, 16).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.next_id(), 4, "from the removal record");
        spool.compact().unwrap();
        assert_eq!(spool.file_bytes(), HEADER_BYTES);
        drop(spool);
        let mut spool = Spool::open(&path, 16).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_BYTES);
        assert_eq!(spool.next_id(), 4, "from the header of the rewritten file");
        assert_eq!(spool.append(&line(4, 100)).unwrap().id, 4);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_remembers_it() {
        let path = scratch("full");
        let mut spool = Spool::open(&path, 3).unwrap();
        let dropped: Vec<Option<u64>> =
            (1..=5).map(|index| spool.append(&line(index, 80)).unwrap().dropped).collect();
        assert_eq!(dropped, [None, None, None, Some(1), Some(2)]);
        assert_eq!(ids(&spool), [3, 4, 5]);
        drop(spool);
        let spool = Spool::open(&path, 3).unwrap();
        assert_eq!(ids(&spool), [3, 4, 5], "drops are recorded in the file");
        assert_eq!(spool.recovery().dropped, 0);
        drop(spool);
        // The capacity was lowered in the config: the oldest beyond it go, counted, and that is recorded too.
        let spool = Spool::open(&path, 2).unwrap();
        assert_eq!(ids(&spool), [4, 5]);
        assert_eq!(spool.recovery(), Recovery { records: 3, torn_bytes: 0, dropped: 1 });
        drop(spool);
        let spool = Spool::open(&path, 2).unwrap();
        assert_eq!((ids(&spool), spool.recovery().dropped), (vec![4, 5], 0));
    }

    #[test]
    fn compaction_keeps_the_file_bounded_and_the_verdicts_intact() {
        let path = scratch("compaction");
        let mut spool = Spool::open(&path, 8).unwrap();
        let (mut largest, mut previous, mut rewrites) = (0, 0, 0);
        for index in 1..=400u64 {
            spool.append(&line(index, 1500)).unwrap();
            // A backlog of about four verdicts, acknowledged in bursts.
            if index % 4 == 0 {
                assert_eq!(spool.remove_through(index - 4), 4.min(index as usize - 4));
            }
            let size = std::fs::metadata(&path).unwrap().len();
            assert_eq!(size, spool.file_bytes());
            rewrites += usize::from(size < previous);
            (largest, previous) = (largest.max(size), size);
        }
        assert!(rewrites >= 5, "{rewrites} rewrites");
        assert!(largest < COMPACT_MIN_BYTES + 10 * record_bytes(1500), "the file grew to {largest} bytes");
        assert_eq!(ids(&spool), [397, 398, 399, 400]);
        drop(spool);
        let spool = Spool::open(&path, 8).unwrap();
        assert_eq!(ids(&spool), [397, 398, 399, 400]);
        assert_eq!(spool.records()[0].line.as_slice(), line(397, 1500).as_slice());
        assert_eq!(spool.next_id(), 401);
    }

    #[test]
    fn a_spool_in_use_is_refused() {
        let path = scratch("locked");
        let spool = Spool::open(&path, 4).unwrap();
        assert!(error_of(&path, 4).contains("in use by another process"));
        drop(spool);
        Spool::open(&path, 4).unwrap();
    }

    #[test]
    fn files_that_are_not_spools_are_refused_and_left_alone() {
        let path = scratch("foreign");
        let mut valid_header = Vec::new();
        drop(Spool::open(&path, 4).unwrap());
        valid_header.extend_from_slice(&std::fs::read(&path).unwrap());
        let mut bad_checksum = valid_header.clone();
        bad_checksum[9] ^= 1;
        let cases: [(&[u8], &str); 4] = [
            (b"", "shorter than its 20-byte header"),
            (b"{\"id\":1,\"type\":\"verdict\"}\n", "no DGSPOOL1 header"),
            (&bad_checksum, "header checksum mismatch at offset 0"),
            (b"DGSPOOL1", "shorter than its 20-byte header"),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, bytes).unwrap();
            let message = error_of(&path, 4);
            assert!(message.contains(expected) && message.contains(&path.display().to_string()), "{message}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn an_unfinished_rewrite_is_discarded() {
        let path = scratch("leftover");
        let mut spool = Spool::open(&path, 4).unwrap();
        spool.append(&line(1, 100)).unwrap();
        drop(spool);
        let temporary = path.with_file_name("gate.spool.tmp");
        std::fs::write(&temporary, b"DGSPOOL1 half written").unwrap();
        let spool = Spool::open(&path, 4).unwrap();
        assert_eq!(ids(&spool), [1]);
        assert!(!temporary.exists());
    }

    #[test]
    fn a_directory_that_does_not_exist_is_an_error_naming_it() {
        let path = scratch("missing").with_file_name("absent").join("gate.spool");
        assert!(error_of(&path, 4).contains(&path.display().to_string()));
        assert!(error_of(&scratch("capacity"), 0).contains("capacity 0 must be 1 to 4096"));
    }

    #[test]
    fn damaged_files_open_with_their_intact_records_or_fail_cleanly() {
        let path = scratch("damage");
        let mut spool = Spool::open(&path, 64).unwrap();
        for index in 1..=12 {
            spool.append(&line(index, 40 + 37 * index as usize)).unwrap();
        }
        spool.remove_through(4);
        drop(spool);
        let original = std::fs::read(&path).unwrap();
        let mut random = XorShift(0x5eed_5001);
        for _ in 0..300 {
            let mut bytes = original.clone();
            for _ in 0..1 + random.below(3) {
                let at = random.below(bytes.len());
                match random.below(3) {
                    0 => bytes[at] ^= 1 << random.below(8),
                    1 => bytes.insert(at, random.byte()),
                    _ => bytes.truncate(at.max(1)),
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            match Spool::open(&path, 64) {
                Ok(spool) => {
                    // Whatever survives is the verdicts as written, in order, never a changed one.
                    let mut previous = 0;
                    for record in spool.records() {
                        assert!(record.id > previous);
                        previous = record.id;
                        assert_eq!(
                            record.line.as_slice(),
                            line(record.id, 40 + 37 * record.id as usize).as_slice()
                        );
                    }
                }
                Err(error) => assert!(format!("{error:#}").contains("gate spool"), "{error:#}"),
            }
        }
    }
}
