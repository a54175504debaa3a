//! The spool's file plumbing: one record framed (CRC, length, kind, id, payload), the lock that keeps a second
//! process out, and a whole file written and renamed into place durably (compaction, creation).

use super::*;

pub(super) fn record_bytes(line_length: usize) -> u64 {
    (RECORD_HEADER_BYTES + line_length) as u64
}

/// Appends one framed record to `buffer`, which has room for the largest write.
pub(super) fn encode(buffer: &mut Vec<u8>, kind: u8, id: u64, payload: &[u8]) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.push(kind);
    buffer.extend_from_slice(&id.to_le_bytes());
    buffer.extend_from_slice(payload);
    let crc = crc32fast::hash(&buffer[start + 4..]);
    buffer[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn lock(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            bail!("gate spool {} is in use by another process (a second deepgate run?)", path.display())
        }
        Err(TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking gate spool {}", path.display()))
        }
    }
}

/// Writes a complete spool file at `path` (header with `next_id`, then `records`), locked and synced.
pub(super) fn write_file<'a>(
    path: &Path,
    next_id: u64,
    records: impl Iterator<Item = &'a Record>,
    buffer: &mut Vec<u8>,
) -> Result<(File, u64)> {
    let context = || format!("writing gate spool {}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(context)?;
    lock(&file, path)?;
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..16].copy_from_slice(&next_id.to_le_bytes());
    let crc = crc32fast::hash(&header[..16]);
    header[16..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0).with_context(context)?;
    let mut length = HEADER_BYTES;
    for record in records {
        buffer.clear();
        encode(buffer, VERDICT, record.id, &record.line);
        file.write_all_at(buffer, length).with_context(context)?;
        length += buffer.len() as u64;
    }
    file.sync_all().with_context(context)?;
    Ok((file, length))
}

/// Renames the written `temporary` file to `path` and syncs the directory, so that the rename is durable.
pub(super) fn install(temporary: &Path, path: &Path) -> Result<()> {
    std::fs::rename(temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("syncing directory {}", directory.display()))
}
