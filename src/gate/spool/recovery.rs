//! Reading a spool file back: its header, then record after record, each CRC checked; a torn tail (a write cut
//! by a power loss) cut off and counted, damage before it refused naming the file and the offset.

use super::*;

impl Spool {
    /// Reads the file from the start: header, then records, as the module documentation describes.
    pub(super) fn recover(&mut self) -> Result<()> {
        let path = self.path.display().to_string();
        let size = self.file.metadata().with_context(|| format!("reading gate spool {path}"))?.len();
        let mut reading = self.file.try_clone().with_context(|| format!("reading gate spool {path}"))?;
        reading.seek(SeekFrom::Start(0)).with_context(|| format!("reading gate spool {path}"))?;
        let mut reader = BufReader::new(reading);
        let mut header = [0u8; HEADER_BYTES as usize];
        let not_a_spool = "move it aside to start an empty spool";
        ensure!(
            read_full(&mut reader, &mut header).with_context(|| format!("reading gate spool {path}"))?
                == header.len(),
            "gate spool {path} is not a spool file (shorter than its {HEADER_BYTES}-byte header); {not_a_spool}"
        );
        ensure!(
            header[..8] == MAGIC,
            "gate spool {path} is not a spool file (no DGSPOOL1 header); {not_a_spool}"
        );
        ensure!(
            crc32fast::hash(&header[..16]) == u32_at(&header, 16),
            "gate spool {path}: header checksum mismatch at offset 0; {not_a_spool}"
        );
        self.next_id = u64_at(&header, 8).max(1);
        // The highest id any record carried, and the highest a removal named.
        let (mut highest, mut removed_through) = (0u64, 0u64);
        // Ids let go while reading because the file holds more than the capacity (normally none). Only those
        // above the last removal are drops: the file removes the others further on.
        let mut over_capacity = Vec::new();
        let mut offset = HEADER_BYTES;
        let mut head = [0u8; RECORD_HEADER_BYTES];
        let mut payload = [0u8; MAX_LINE];
        loop {
            let got =
                read_full(&mut reader, &mut head).with_context(|| format!("reading gate spool {path}"))?;
            if got == 0 {
                break;
            }
            let length = u32_at(&head, 4) as usize;
            let problem = if got < head.len() {
                Some("an incomplete record header")
            } else if length > MAX_LINE {
                Some("a record length beyond the longest line")
            } else if read_full(&mut reader, &mut payload[..length])
                .with_context(|| format!("reading gate spool {path}"))?
                < length
            {
                Some("an incomplete record")
            } else {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&head[4..]);
                hasher.update(&payload[..length]);
                (hasher.finalize() != u32_at(&head, 0)).then_some("a checksum mismatch")
            };
            if let Some(problem) = problem {
                let rest = size - offset;
                ensure!(
                    rest <= MAX_WRITE_BYTES as u64,
                    "gate spool {path}: {problem} at offset {offset}, {rest} bytes before the end: corruption, \
                     not a write cut short (the file is left as it is; move it aside to start an empty spool, \
                     whose ids start again at 1)"
                );
                self.recovery.torn_bytes = rest;
                break;
            }
            // Checksummed, so written whole: a record that breaks the format's rules was not written by us.
            let (kind, id, line) = (head[8], u64_at(&head, 9), &payload[..length]);
            match kind {
                VERDICT => {
                    ensure!(
                        id > highest,
                        "gate spool {path}: verdict id {id} at offset {offset} does not follow id {highest}"
                    );
                    ensure!(
                        line.first() == Some(&b'{') && line.last() == Some(&b'}') && !line.contains(&b'\n'),
                        "gate spool {path}: the verdict at offset {offset} is not a JSON object line"
                    );
                    if self.records.len() >= self.capacity {
                        over_capacity.extend(self.records.front().map(|record| record.id));
                        self.pop_front();
                    }
                    let line = Line::from_slice(line).map_err(|()| anyhow!("line longer than {MAX_LINE}"))?;
                    self.records.push_back(Record { id, line });
                    self.live_bytes += record_bytes(length);
                }
                REMOVAL => {
                    ensure!(
                        length == 0 && id <= highest,
                        "gate spool {path}: the removal at offset {offset} names id {id}, beyond id {highest}"
                    );
                    while self.records.front().is_some_and(|record| record.id <= id) {
                        self.pop_front();
                    }
                    removed_through = removed_through.max(id);
                }
                other => bail!("gate spool {path}: unknown record kind {other} at offset {offset}"),
            }
            highest = highest.max(id);
            offset += record_bytes(length);
        }
        drop(reader);
        let dropped = &over_capacity[over_capacity.partition_point(|&id| id <= removed_through)..];
        self.recovery.dropped = dropped.len() as u64;
        self.recovery.records = self.records.len() + self.recovery.dropped as usize;
        self.length = offset;
        self.next_id = self.next_id.max(highest.checked_add(1).context("gate spool ids exhausted")?);
        if self.recovery.torn_bytes > 0 {
            self.file
                .set_len(offset)
                .and_then(|()| self.file.sync_data())
                .with_context(|| format!("cutting the torn end off gate spool {path}"))?;
            log::warn!(
                "gate spool {path}: cut off {} byte(s) of a write torn by a crash at offset {offset}",
                self.recovery.torn_bytes
            );
        }
        if let Some(&last) = dropped.last() {
            log::warn!(
                "gate spool {path}: held more than its capacity of {}; dropped the oldest {} verdict(s)",
                self.capacity,
                self.recovery.dropped
            );
            self.buffer.clear();
            encode(&mut self.buffer, REMOVAL, last, &[]);
            self.write_buffer()?;
        }
        self.compact_if_due();
        Ok(())
    }
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
pub(super) fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}
