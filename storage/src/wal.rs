//! The Raft log's entries in append-only segment files of our own.
//!
//! Files: `<data dir>/raft-wal/<generation:016x>-<seq:016x>.wal`. A segment
//! holds consecutive entries; the active (last) one takes every append until
//! it has passed [`SEGMENT_TARGET_BYTES`], then a new one starts. A record is
//!
//! ```text
//! len: u32 LE | index: u64 LE | crc32(len ++ index): u32 LE | value (len bytes)
//! ```
//!
//! where `value` is the sealed entry (checksum ++ protobuf `Entry`) that the
//! repair protocol exchanges (`RaftLog::committed_records`). The header's own
//! CRC separates a damaged header (fatal at open: the records behind it can no
//! longer be found) from a damaged value (a damaged entry, found by
//! `RaftLog::damaged_entries` and repairable from a peer).
//!
//! Why not sled, which held the log before: every Raft Ready paid a sled
//! flush on sled's I/O pool (a `pwrite` and a `sync_file_range` per IO
//! buffer, seven thread wake-ups each) before its fdatasync, and every
//! compacted entry a sled leaf copy. Here a Ready's entries are one `pwrite`
//! of the active segment and its barrier one `fdatasync`; compaction deletes
//! whole files.
//!
//! Durability: [`Wal::sync`] fdatasyncs the active segment. A segment is
//! synced before the next one is created, and creating, truncating or
//! deleting files is followed by an fsync of the directory, so after a crash
//! only the unsynced tail of the last segment can be missing or torn.
//!
//! Preallocation: a new segment's space is reserved up front with
//! `fallocate(2)` ([`SEGMENT_PREALLOC_BYTES`]), as etcd does with its WAL
//! files, so the file does not grow with each append: an fdatasync after an
//! append that grows a file must also commit the new size to the
//! filesystem's journal, one that writes inside the reserved space mostly
//! does not (on this project's ext4 test host, fdatasync p50 of a 1 KiB
//! append 0.16–0.22 ms growing against 0.10–0.14 ms preallocated;
//! `benches/README.md`). A sealed segment is cut back to what it holds
//! before the next one is created, so only the last segment ever ends in
//! reserved space, which reads as zeros. Where the filesystem cannot
//! reserve space the file simply grows, as before.
//!
//! Recovery at open ([`Wal::open`]): segment files of another generation are
//! removed (a snapshot install bumps the generation once its metadata is
//! durable). In the last segment of a file holding reserved space (at least
//! [`SEGMENT_PREALLOC_BYTES`]), zeros from a record boundary to the end of
//! the file are that space, not damage: the log ends there. Other (or, in a
//! shorter file, any) damage that looks like an interrupted
//! write (a record running past the end of the file, or a sector of it all
//! zeros) with no intact later record after it is a torn tail, and is cut
//! off (see [`is_torn`]). A damaged value that is not torn is kept, for
//! `RaftLog` to report and a peer to repair. Anything else (a damaged header
//! that is not a torn tail, an index out of sequence, a sealed segment cut
//! short) is `Corrupt`: the node refuses to start rather than silently drop
//! entries it may have acknowledged.
//!
//! Owns: the segment files, the index → location map, torn-tail recovery.
//! Must never: interpret entries (terms, commit) or cut anything but a torn
//! tail on its own; what may be truncated or compacted is `RaftLog`'s call.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::open_value;
use crate::error::corrupt;
use crate::StorageError;

/// Directory of the segment files inside a node's data directory.
pub(crate) const WAL_DIR: &str = "raft-wal";

/// A segment is sealed and a new one started once it has grown past this.
/// Compaction frees space a whole segment at a time, so this is also how much
/// compacted log a node may keep on disk beyond its retention: 16 MiB is about
/// 23 000 entries of a 256-byte put, the order of the default compaction
/// threshold, and few enough files for a large log.
pub(crate) const SEGMENT_TARGET_BYTES: u64 = 16 << 20;

/// Space reserved for a new segment: the target plus room for the batch
/// that crosses it (a Ready of a few hundred entries is well under 1 MiB).
/// A segment that outgrows it grows the file as usual.
pub(crate) const SEGMENT_PREALLOC_BYTES: u64 = SEGMENT_TARGET_BYTES + (1 << 20);

/// Largest record value accepted when reading a header back. Entries are
/// bounded far below this by the transport (`MAX_REASSEMBLED_BYTES`, 1 GiB
/// for a snapshot, which never enters the log) and the proposal limits; a
/// larger length can only be damage that the header CRC did not catch.
const MAX_RECORD_VALUE_BYTES: u32 = 512 << 20;

const HEADER_LEN: usize = 16;

/// Largest entry index a log holds: far above any index a real log reaches
/// (one per entry, from 1), so `index + n` for the small `n` the logs and
/// their callers add (the next index, a read's exclusive end, a scan chunk)
/// never overflows. A record read back with a larger index is damage, and
/// an append of one is refused, so every index in a `Wal` is at most this.
pub(crate) const MAX_RECORD_INDEX: u64 = u64::MAX / 2;

/// Where one entry's record is in its segment; which segment follows from
/// the segments' first indexes. Eight bytes per retained record, because
/// the audit trail retains a million of them by default (its index was
/// 24 bytes a record, 23 MiB, the leader's RSS growth in a sustained run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    /// Offset of the record (its header) in the segment.
    offset: u32,
    /// Length of the value.
    len: u32,
}

/// A record's location, resolved: the segment's position in `segments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    pos: usize,
    offset: u64,
    len: u32,
}

impl Found {
    fn end(&self) -> u64 {
        self.offset + HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Most bytes a segment may hold: `Loc` keeps offsets in 32 bits. A batch
/// that would cross it continues in a new segment; a longer file at open is
/// damage.
const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

/// Largest index stride: a lookup reads at most this many records forward.
const MAX_INDEX_STRIDE: u64 = 4_096;

/// Bytes read at a time when reading forward through records.
const SCAN_BLOCK_BYTES: u64 = 64 << 10;

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Shared with a [`PendingSync`], which syncs it without the log's lock.
    file: Arc<File>,
    /// Bytes written.
    len: u64,
    /// Bytes known durable (fdatasynced, or in a simulation, "synced").
    synced_len: u64,
    /// In-place rewrites of records, ever; the segment needs a sync while
    /// this is ahead of `synced_rewrites` (a rewrite may lie below
    /// `synced_len`).
    rewrites: u64,
    synced_rewrites: u64,
    /// Times it was cut shorter (`truncate_from`). A barrier that began
    /// before a cut credits no length: the bytes past the cut that it
    /// synced are gone, and new ones may stand there.
    cuts: u64,
    /// Index of its first record, or of the next append if it has none.
    first_index: u64,
    /// Whether its space was reserved, or found reserved, since it was
    /// opened, created or cut: done at its next write, so that opening a
    /// log (a tool reading it) changes no file.
    reserve_checked: bool,
}

/// One segment a [`PendingSync`] will fdatasync, and what that covers.
#[derive(Debug)]
struct SyncTarget {
    /// The segment's own handle: a segment removed and another created
    /// under the same sequence number (a cut, a reset) is not this one.
    file: Arc<File>,
    len: u64,
    rewrites: u64,
    cuts: u64,
}

/// A durability barrier taken from a [`Wal`] ([`Wal::begin_sync`]) so that
/// its fdatasyncs run without the lock that guards the log: readers of the
/// log (the Raft driver's term lookups and sends, on the node's runtime
/// thread) need that lock, and an fdatasync is the longest thing the log
/// does. Writers may change the log meanwhile; [`Wal::finish_sync`]
/// credits only what is still the same bytes.
#[derive(Debug)]
pub(crate) struct PendingSync {
    simulation: bool,
    segments: Vec<SyncTarget>,
}

impl PendingSync {
    pub(crate) fn run(&self) -> Result<(), StorageError> {
        if !self.simulation {
            for t in &self.segments {
                t.file.sync_data()?;
            }
        }
        Ok(())
    }
}

/// A [`Wal`]'s durability barrier with its fdatasyncs run outside `guard`,
/// the mutex that holds the log (`wal` picks the log out of it): begin
/// under the lock, sync without it, then credit or record the failure under
/// it again.
pub(crate) fn sync_outside_lock<T>(
    guard: &std::sync::Mutex<T>,
    wal: impl Fn(&mut T) -> &mut Wal,
) -> Result<(), StorageError> {
    let pending = wal(&mut crate::store::lock(guard)).begin_sync()?;
    let synced = pending.run();
    let mut held = crate::store::lock(guard);
    match synced {
        Ok(()) => {
            wal(&mut held).finish_sync(&pending);
            Ok(())
        }
        Err(e) => {
            wal(&mut held).fail_sync(&e);
            Err(e)
        }
    }
}

/// Segment files, the location of every retained entry, and the write cursor.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    /// Name of `dir` inside the data directory (`copy_durable_to`).
    dir_name: &'static str,
    /// What the records are, for messages: "raft log", "audit trail".
    label: &'static str,
    generation: u64,
    /// Ascending by `seq`; never empty; the last is the active segment.
    segments: Vec<Segment>,
    /// `locs[k]` is the record of entry `locs_first + k * stride`: every
    /// entry whose index is a multiple of `stride`. Dense (stride 1) for the
    /// Raft log, which reads single entries on hot paths; sparse for the
    /// audit trail, which is read in long runs and would otherwise hold an
    /// index entry per retained record (8 MiB at a million) in memory.
    locs: VecDeque<Loc>,
    locs_first: u64,
    /// Entries `[first, first + count)` are retained.
    first: u64,
    count: u64,
    stride: u64,
    /// A simulation store: `sync` records durability without fdatasync.
    simulation: bool,
    /// `MAX_SEGMENT_BYTES`, lowered by tests to reach the split path.
    max_segment_bytes: u64,
    /// Set by the first failed fdatasync. After one, the kernel may have
    /// dropped the dirty pages, and a later fdatasync can succeed without
    /// them; so no barrier succeeds again until the log is reopened.
    sync_failed: Option<String>,
}

/// What `Wal::open` found and did, for the log line and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OpenReport {
    /// Bytes cut off the last segment as a torn tail.
    pub(crate) torn_bytes: u64,
    /// Segment files of other generations removed.
    pub(crate) stale_files: usize,
}

pub(crate) fn header(len: u32, index: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..12].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `Ok(Some((len, index)))` for a valid header, `Ok(None)` for all zeros.
fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Option<(u32, u64)>, ()> {
    if h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let mut index = [0u8; 8];
    index.copy_from_slice(&h[4..12]);
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if crc != crc32fast::hash(&h[..12]) || len > MAX_RECORD_VALUE_BYTES {
        return Err(());
    }
    Ok(Some((len, u64::from_le_bytes(index))))
}

pub(crate) fn segment_name(generation: u64, seq: u64) -> String {
    format!("{generation:016x}-{seq:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (g, s) = stem.split_once('-')?;
    if g.len() != 16 || s.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(g, 16).ok()?,
        u64::from_str_radix(s, 16).ok()?,
    ))
}

/// Deletes segment files detached from their log, then fsyncs `dir` so
/// the deletions survive a crash. A file already gone counts as deleted: a
/// snapshot install may have removed its generation meanwhile.
pub(crate) fn remove_segment_files(dir: &Path, paths: &[PathBuf]) -> Result<usize, StorageError> {
    let mut removed = 0;
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !paths.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reserves the space of a segment file from `from` (what it holds) up to
/// `upto`, extending its length; the reserved bytes read as zeros. Returns
/// whether space was reserved: a filesystem without `fallocate` (or a full
/// disk) leaves the file to grow with each append.
fn preallocate(file: &File, from: u64, upto: u64) -> bool {
    if from >= upto {
        return false;
    }
    reserve(file, from, upto - from)
}

#[cfg(target_os = "linux")]
fn reserve(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // On tmpfs reserved space is memory taken up front, and its fdatasync
    // has nothing to commit anyway.
    // SAFETY: fstatfs writes only into `fs`, which it is given.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } == 0 && fs.f_type == libc::TMPFS_MAGIC {
        return false;
    }
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // owned by `file`, which outlives the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot reserve a log segment's space; it grows with each append"
        );
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _offset: u64, _len: u64) -> bool {
    false
}

fn open_rw(path: &Path, create: bool) -> Result<File, StorageError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)?)
}

/// One record as found in a segment's bytes.
enum Record<'a> {
    /// A header that checks out and the whole value it announces.
    Whole {
        index: u64,
        len: u32,
        value: &'a [u8],
    },
    /// Cut short by the end of the file, zeros, or a header failing its CRC.
    Broken,
}

fn read_record(bytes: &[u8], offset: usize) -> Record<'_> {
    let Some(h) = bytes.get(offset..offset + HEADER_LEN) else {
        return Record::Broken;
    };
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(h);
    let Ok(Some((len, index))) = parse_header(&header) else {
        return Record::Broken;
    };
    let start = offset + HEADER_LEN;
    match bytes.get(start..start + len as usize) {
        Some(value) => Record::Whole { index, len, value },
        None => Record::Broken,
    }
}

/// Where the record at `offset` ends by its header (possibly past the end
/// of `bytes`); just past the header if that does not parse.
fn announced_end(bytes: &[u8], offset: usize) -> usize {
    bytes
        .get(offset..offset + HEADER_LEN)
        .map(|h| {
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(h);
            match parse_header(&header) {
                Ok(Some((len, _))) => offset + HEADER_LEN + len as usize,
                _ => offset + HEADER_LEN,
            }
        })
        // A header cut short by the end of the file.
        .unwrap_or(offset + HEADER_LEN)
}

/// One past the last byte of `bytes` that is not zero (0 if all are).
fn written_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

/// Disk sector size assumed for torn writes: a write interrupted by a crash
/// leaves whole sectors unwritten, which read back as zeros.
const SECTOR_BYTES: usize = 512;

/// Whether the damage at `offset` in the last segment is a write that a
/// crash interrupted, and so may be cut off with everything after it:
///
/// * it looks torn: the record runs past the end of the file, or a part of
///   it that falls in one disk sector is all zeros; and
/// * no intact record of a later entry follows it (a crash loses a suffix
///   of unsynced writes; intact data after the damage means it was written
///   after, so the damage is not a torn tail, and cutting would drop entries
///   that may have been acknowledged).
///
/// Anything else is refused as damage: losing acknowledged entries silently
/// would break Raft's safety, refusing to start only this node's
/// availability. (A crash that wrote a later page of an unsynced write but
/// not an earlier one is also refused; rare, and safe.)
fn is_torn(bytes: &[u8], offset: usize, expected: Option<u64>) -> bool {
    let announced_end = announced_end(bytes, offset);
    let runs_past_end = announced_end > bytes.len();
    let span = &bytes[offset..announced_end.min(bytes.len())];
    let zero_sector = {
        let mut at = offset;
        let end = offset + span.len();
        let mut found = false;
        while at < end {
            let chunk_end = ((at / SECTOR_BYTES) + 1) * SECTOR_BYTES;
            let chunk = &bytes[at..chunk_end.min(end)];
            if chunk.iter().all(|&b| b == 0) {
                found = true;
                break;
            }
            at = chunk_end;
        }
        found
    };
    if !(runs_past_end || zero_sector) {
        return false;
    }
    // Look for an intact record of an entry at or after the damaged one. A
    // record's header is not all zeros, so none starts past the last byte
    // that is not zero (reserved space is zeros).
    let min_index = expected.unwrap_or(0);
    (offset + 1..written_end(bytes)).all(|at| match read_record(bytes, at) {
        Record::Whole { index, value, .. } => {
            index < min_index || open_value(value, "raft log entry").is_err()
        }
        Record::Broken => true,
    })
}

impl Wal {
    /// Opens the log of `generation` in `data_dir`, recovering as described
    /// in the module docs; creates the directory and a first segment if
    /// there are none.
    pub(crate) fn open(
        data_dir: &Path,
        generation: u64,
        simulation: bool,
    ) -> Result<(Wal, OpenReport), StorageError> {
        Wal::open_in(data_dir, WAL_DIR, "raft log", generation, simulation, 1)
    }

    /// [`Wal::open`] for another sequence of records (the audit trail) in
    /// `data_dir/dir_name`; `label` names them in messages. Only every
    /// `index_stride`-th record's location is kept in memory; the others are
    /// found by reading forward from it (see `locs`).
    pub(crate) fn open_in(
        data_dir: &Path,
        dir_name: &'static str,
        label: &'static str,
        generation: u64,
        simulation: bool,
        index_stride: u64,
    ) -> Result<(Wal, OpenReport), StorageError> {
        if index_stride == 0 || index_stride > MAX_INDEX_STRIDE {
            return Err(StorageError::Invalid(format!(
                "{label}: index stride {index_stride} is outside 1..={MAX_INDEX_STRIDE}"
            )));
        }
        let dir = data_dir.join(dir_name);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            // The new name must survive a crash like the files in it.
            sync_dir(data_dir)?;
        }
        let mut report = OpenReport::default();
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            let name = item.file_name();
            let Some((g, seq)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            if g > generation {
                return Err(corrupt(format!(
                    "{label} segment {} is of generation {g}, newer than the metadata's {generation}",
                    item.path().display()
                )));
            }
            if g < generation {
                std::fs::remove_file(item.path())?;
                report.stale_files += 1;
            } else if seq == u64::MAX {
                // The next segment would be `seq + 1`.
                return Err(corrupt(format!(
                    "{label} segment {}: sequence number {seq} is out of range",
                    item.path().display()
                )));
            } else {
                found.push((seq, item.path()));
            }
        }
        if report.stale_files > 0 {
            sync_dir(&dir)?;
        }
        found.sort();
        let mut wal = Wal {
            dir,
            dir_name,
            label,
            generation,
            max_segment_bytes: MAX_SEGMENT_BYTES,
            segments: Vec::new(),
            locs: VecDeque::new(),
            locs_first: 0,
            first: 0,
            count: 0,
            stride: index_stride,
            simulation,
            sync_failed: None,
        };
        let count = found.len();
        for (i, (seq, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            report.torn_bytes += wal.load_segment(seq, path, is_last)?;
        }
        if wal.segments.is_empty() {
            wal.create_segment(1, 0)?;
        }
        Ok((wal, report))
    }

    /// Reads one segment's records into `locs`; returns the bytes cut off
    /// as a torn tail (last segment only, see [`is_torn`]).
    fn load_segment(
        &mut self,
        seq: u64,
        path: PathBuf,
        is_last: bool,
    ) -> Result<u64, StorageError> {
        let file = open_rw(&path, false)?;
        let on_disk = file.metadata()?.len();
        if on_disk > MAX_SEGMENT_BYTES {
            return Err(corrupt(format!(
                "{} segment {} is {on_disk} bytes, more than a segment can hold",
                self.label,
                path.display()
            )));
        }
        let bytes = std::fs::read(&path)?;
        let file_len = bytes.len() as u64;
        let label = self.label;
        let where_ = |offset: u64| format!("{label} segment {} at offset {offset}", path.display());
        let mut first_index = self.last_index().map(|l| l + 1);
        let mut offset = 0usize;
        let mut torn = 0u64;
        while offset < bytes.len() {
            let expected = self.last_index().map(|l| l + 1);
            let record = read_record(&bytes, offset);
            let damaged_value = match record {
                Record::Whole { index, value, .. } => {
                    if index > MAX_RECORD_INDEX {
                        return Err(corrupt(format!(
                            "{}: entry index {index} is out of range (at most {MAX_RECORD_INDEX})",
                            where_(offset as u64)
                        )));
                    }
                    if expected.is_some_and(|e| index != e) {
                        return Err(corrupt(format!(
                            "{}: entry {index} where {} was expected",
                            where_(offset as u64),
                            expected.unwrap_or(index)
                        )));
                    }
                    // Values are sealed (checksum ++ entry). Only the last
                    // segment can hold a torn one; elsewhere a damaged value
                    // is a damaged entry, found when it is read.
                    is_last && open_value(value, "raft log entry").is_err()
                }
                Record::Broken => false,
            };
            if is_last
                && file_len >= SEGMENT_PREALLOC_BYTES
                && matches!(record, Record::Broken)
                && bytes[offset..].iter().all(|&b| b == 0)
            {
                // Reserved space (or a write that left nothing behind): the
                // log ends here, and the next append lands here.
                break;
            }
            if matches!(record, Record::Broken) || damaged_value {
                if is_last && is_torn(&bytes, offset, expected) {
                    // Reserved space after the torn write is not part of it.
                    let end = if file_len >= SEGMENT_PREALLOC_BYTES {
                        written_end(&bytes)
                            .max(announced_end(&bytes, offset).min(bytes.len()))
                            .max(offset)
                    } else {
                        bytes.len()
                    };
                    torn = (end - offset) as u64;
                    file.set_len(offset as u64)?;
                    file.sync_all()?;
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        bytes = torn,
                        log = self.label,
                        "cut a torn tail off a log (a write interrupted by a crash)"
                    );
                    break;
                }
                if !damaged_value {
                    return Err(corrupt(format!(
                        "{}: record damaged (not a torn write: intact data follows it, or \
                         it is not where a crash leaves one)",
                        where_(offset as u64)
                    )));
                }
                // A damaged value that is not a torn write: kept, so that
                // reading it reports the damage (repairable from a peer).
            }
            let Record::Whole { index, len, .. } = record else {
                // A broken record was cut or refused above; never kept.
                return Err(corrupt(format!(
                    "{}: record damaged",
                    where_(offset as u64)
                )));
            };
            first_index.get_or_insert(index);
            self.push_loc(
                index,
                Loc {
                    // The file is at most MAX_SEGMENT_BYTES (checked above).
                    offset: offset as u32,
                    len,
                },
            );
            offset += HEADER_LEN + len as usize;
        }
        let len = offset as u64;
        self.segments.push(Segment {
            seq,
            path,
            file: Arc::new(file),
            len,
            synced_len: len,
            rewrites: 0,
            synced_rewrites: 0,
            cuts: 0,
            first_index: first_index.unwrap_or(0),
            reserve_checked: false,
        });
        Ok(torn)
    }

    fn create_segment(&mut self, seq: u64, first_index: u64) -> Result<(), StorageError> {
        let path = self.dir.join(segment_name(self.generation, seq));
        let file = open_rw(&path, true)?;
        file.set_len(0)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            seq,
            path,
            file: Arc::new(file),
            len: 0,
            synced_len: 0,
            rewrites: 0,
            synced_rewrites: 0,
            cuts: 0,
            first_index,
            reserve_checked: false,
        });
        Ok(())
    }

    /// Reserves the active segment's space once after it was opened,
    /// created or cut (module docs). Made durable by its next fdatasync;
    /// until then a crash leaves zeros or a shorter file, the same to
    /// recovery.
    fn reserve_active(&mut self) {
        if self.simulation {
            return;
        }
        let upto = self.prealloc_bytes();
        let active = self.active();
        if active.reserve_checked {
            return;
        }
        active.reserve_checked = true;
        // Reserving what is reserved already changes nothing, so only a
        // file shorter than the reservation is worth the call.
        if active.file.metadata().is_ok_and(|m| m.len() < upto) {
            preallocate(&active.file, active.len, upto);
        }
    }

    /// Space reserved for a segment: [`SEGMENT_PREALLOC_BYTES`], or less
    /// where tests lower the segment limit.
    fn prealloc_bytes(&self) -> u64 {
        SEGMENT_PREALLOC_BYTES.min(self.max_segment_bytes)
    }

    fn active(&mut self) -> &mut Segment {
        // `open` and `reset` always leave at least one segment.
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    pub(crate) fn first_index(&self) -> Option<u64> {
        (self.count > 0).then_some(self.first)
    }

    pub(crate) fn last_index(&self) -> Option<u64> {
        (self.count > 0).then(|| self.first + self.count - 1)
    }

    /// Index the next append must have (any, while nothing was ever
    /// appended or forgotten: then 0).
    pub(crate) fn next_index(&self) -> u64 {
        self.first + self.count
    }

    /// Records entry `index`, the next one, at `loc`.
    fn push_loc(&mut self, index: u64, loc: Loc) {
        debug_assert!(self.count == 0 || index == self.next_index());
        if self.count == 0 {
            self.first = index;
        }
        if index.is_multiple_of(self.stride) {
            if self.locs.is_empty() {
                self.locs_first = index;
            }
            self.locs.push_back(loc);
        }
        self.count += 1;
    }

    /// Length of the stored value of entry `index`.
    pub(crate) fn value_len(&self, index: u64) -> Option<u32> {
        self.find(index).ok().flatten().map(|l| l.len)
    }

    /// The segment holding retained entry `index` (the last one starting at
    /// or before it: only the active segment can be empty, and its first
    /// index is then past every record).
    fn segment_of(&self, index: u64) -> Option<usize> {
        if index < self.first || index - self.first >= self.count {
            return None;
        }
        self.segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)
    }

    /// Where to start reading forward to reach `index` in segment `pos`:
    /// its indexed location, else the nearest indexed entry before it in
    /// the same segment, else the segment's first record (offset 0).
    fn start_for(&self, pos: usize, index: u64) -> (u64, u64) {
        let anchor = index - index % self.stride;
        if anchor >= self.segments[pos].first_index && anchor >= self.locs_first {
            let k = (anchor - self.locs_first) / self.stride;
            if let Some(l) = usize::try_from(k).ok().and_then(|k| self.locs.get(k)) {
                return (anchor, u64::from(l.offset));
            }
        }
        (self.segments[pos].first_index, 0)
    }

    /// The location of entry `index` when the index holds it (always, for a
    /// dense one), without reading the segment.
    fn loc(&self, index: u64) -> Option<Found> {
        let pos = self.segment_of(index)?;
        if index < self.locs_first {
            return None;
        }
        let k = if self.stride == 1 {
            // The Raft log's reads, record by record: no division.
            index - self.locs_first
        } else if index.is_multiple_of(self.stride) {
            (index - self.locs_first) / self.stride
        } else {
            return None;
        };
        let k = usize::try_from(k).ok()?;
        let l = self.locs.get(k)?;
        Some(Found {
            pos,
            offset: u64::from(l.offset),
            len: l.len,
        })
    }

    /// The location of retained entry `index`, reading record headers
    /// forward from the nearest indexed entry if it is not indexed.
    fn find(&self, index: u64) -> Result<Option<Found>, StorageError> {
        if let Some(found) = self.loc(index) {
            return Ok(Some(found));
        }
        if self.segment_of(index).is_none() {
            return Ok(None);
        }
        let mut found = None;
        self.scan(index, index + 1, |_, at, _| found = Some(at))?;
        Ok(found)
    }

    /// Reads entries `[lo, hi)` in order, forward from the nearest indexed
    /// entry at or before `lo`, in blocks of `SCAN_BLOCK_BYTES`; `visit`
    /// gets each entry's index, location and value. Every header must name
    /// the entry expected there.
    fn scan(
        &self,
        lo: u64,
        hi: u64,
        mut visit: impl FnMut(u64, Found, &[u8]),
    ) -> Result<(), StorageError> {
        let label = self.label;
        let missing = |index: u64| corrupt(format!("{label} entry {index} missing"));
        let mut pos = self.segment_of(lo).ok_or_else(|| missing(lo))?;
        let (mut index, mut offset) = self.start_for(pos, lo);
        let mut block: Vec<u8> = Vec::new();
        let mut block_at = 0u64;
        while index < hi {
            if offset >= self.segments[pos].len {
                pos += 1;
                match self.segments.get(pos) {
                    Some(s) if s.first_index == index && s.len > 0 => offset = 0,
                    _ => return Err(missing(index)),
                }
                block.clear();
                block_at = 0;
            }
            let seg = &self.segments[pos];
            let header = self.scan_bytes(seg, &mut block, &mut block_at, offset, HEADER_LEN)?;
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(header);
            let len = match parse_header(&h) {
                Ok(Some((len, got))) if got == index => len,
                _ => {
                    return Err(corrupt(format!(
                        "{label} entry {index}: record header damaged"
                    )))
                }
            };
            let found = Found { pos, offset, len };
            if index >= lo {
                let value = self.scan_bytes(
                    seg,
                    &mut block,
                    &mut block_at,
                    offset + HEADER_LEN as u64,
                    len as usize,
                )?;
                visit(index, found, value);
            }
            offset = found.end();
            index += 1;
        }
        Ok(())
    }

    /// `want` bytes of `seg` at `offset`, from `block` (which holds the
    /// segment's bytes from `block_at`) or after refilling it.
    fn scan_bytes<'b>(
        &self,
        seg: &Segment,
        block: &'b mut Vec<u8>,
        block_at: &mut u64,
        offset: u64,
        want: usize,
    ) -> Result<&'b [u8], StorageError> {
        let end = offset + want as u64;
        if offset < *block_at || end > *block_at + block.len() as u64 {
            if end > seg.len {
                return Err(corrupt(format!(
                    "{} segment {}: a record runs past the end of the segment",
                    self.label,
                    seg.path.display()
                )));
            }
            let size = (want as u64).max(SCAN_BLOCK_BYTES).min(seg.len - offset);
            block.resize(size as usize, 0);
            seg.file.read_exact_at(block, offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    corrupt(format!(
                        "{} segment {}: shorter than its index",
                        self.label,
                        seg.path.display()
                    ))
                } else {
                    e.into()
                }
            })?;
            *block_at = offset;
        }
        let from = (offset - *block_at) as usize;
        Ok(&block[from..from + want])
    }

    /// Appends records `(index, value)`. The first index must follow the
    /// last entry (any index if the log is empty); `RaftLog` truncates a
    /// conflicting suffix first. Not durable until `sync`.
    pub(crate) fn append(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        if let Some((index, _)) = records.iter().find(|(i, _)| *i > MAX_RECORD_INDEX) {
            return Err(StorageError::Invalid(format!(
                "{} append: index {index} is out of range (at most {MAX_RECORD_INDEX})",
                self.label
            )));
        }
        if let Some(last) = self.last_index() {
            if *first != last + 1 {
                return Err(StorageError::Invalid(format!(
                    "{} append at {first} does not follow {last}",
                    self.label
                )));
            }
        }
        if records.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
            return Err(StorageError::Invalid(format!(
                "{} append: records are not consecutive",
                self.label
            )));
        }
        if records
            .iter()
            .any(|(_, v)| v.len() > MAX_RECORD_VALUE_BYTES as usize)
        {
            return Err(StorageError::Invalid(format!(
                "{} record larger than {MAX_RECORD_VALUE_BYTES} bytes",
                self.label
            )));
        }
        let mut rest = records;
        while let Some((next, _)) = rest.first() {
            if self.active().len >= SEGMENT_TARGET_BYTES {
                self.rotate(*next)?;
            }
            // As many records as fit below MAX_SEGMENT_BYTES: normally all.
            let room = self.max_segment_bytes.saturating_sub(self.active().len);
            let mut bytes = 0u64;
            let fitting = rest
                .iter()
                .take_while(|(_, v)| {
                    bytes += (HEADER_LEN + v.len()) as u64;
                    bytes <= room
                })
                .count();
            if fitting == 0 {
                // Not even one more fits after what this segment holds; an
                // empty segment takes any record (MAX_RECORD_VALUE_BYTES).
                self.rotate(*next)?;
                continue;
            }
            let (now, later) = rest.split_at(fitting);
            self.write_records(now)?;
            rest = later;
        }
        Ok(())
    }

    /// Writes consecutive records that fit in the active segment.
    fn write_records(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        let size: usize = records.iter().map(|(_, v)| HEADER_LEN + v.len()).sum();
        let mut buf = Vec::with_capacity(size);
        let start = self.active().len;
        debug_assert!(start + size as u64 <= self.max_segment_bytes);
        let mut locs = Vec::with_capacity(records.len());
        for (index, value) in records {
            // Bounded by MAX_RECORD_VALUE_BYTES and MAX_SEGMENT_BYTES
            // (checked by the caller), so both fit in 32 bits.
            let len = value.len() as u32;
            locs.push(Loc {
                offset: (start + buf.len() as u64) as u32,
                len,
            });
            buf.extend_from_slice(&header(len, *index));
            buf.extend_from_slice(value);
        }
        self.reserve_active();
        let active = self.active();
        if active.len == 0 {
            active.first_index = *first;
        }
        active.file.write_all_at(&buf, start)?;
        active.len += buf.len() as u64;
        for ((index, _), loc) in records.iter().zip(locs) {
            self.push_loc(*index, loc);
        }
        Ok(())
    }

    /// Seals the active segment (synced, cut back to what it holds) and
    /// starts the next one. The cut is durable before the next segment
    /// exists, so only the last segment can end in reserved space.
    fn rotate(&mut self, next_index: u64) -> Result<(), StorageError> {
        self.sync()?;
        if !self.simulation {
            // Every time, even when the file looks cut already: a cut
            // whose sync failed may not be on disk, and a sealed segment
            // ending in reserved space is refused at open.
            let active = self.active();
            active.file.set_len(active.len)?;
            active.file.sync_all()?;
        }
        let seq = self.active().seq + 1;
        self.create_segment(seq, next_index)
    }

    /// Drops every entry at or after `index` and makes that durable before
    /// returning, so no later append can land before stale records that a
    /// crash would bring back.
    pub(crate) fn truncate_from(&mut self, index: u64) -> Result<(), StorageError> {
        let Some(loc) = self.find(index)? else {
            return Ok(());
        };
        let mut removed = false;
        while self.segments.len() > loc.pos + 1 {
            if let Some(s) = self.segments.pop() {
                std::fs::remove_file(&s.path)?;
                removed = true;
            }
        }
        if removed {
            // Before the cut: a crash must not bring back later segments
            // behind a shortened one.
            sync_dir(&self.dir)?;
        }
        let simulation = self.simulation;
        let active = self.active();
        // Recorded before the fallible calls, so that a barrier in flight
        // credits nothing of this segment even if the cut fails midway.
        active.cuts += 1;
        active.len = loc.offset;
        active.synced_len = active.synced_len.min(loc.offset);
        active.file.set_len(loc.offset)?;
        // The cut freed the stale records' blocks: space reserved again at
        // the next write reads as zeros, so none of them can come back.
        active.reserve_checked = false;
        if !simulation {
            active.file.sync_all()?;
        }
        if active.len == 0 {
            active.first_index = index;
        }
        // Indexed entries before `index` stay.
        self.count = index - self.first;
        let keep = index.saturating_sub(self.locs_first).div_ceil(self.stride);
        self.locs
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        if self.count == 0 {
            self.locs.clear();
        }
        Ok(())
    }

    /// Forgets entries before `index` (they stay on disk until
    /// `detach_segments_before` hands their segment over for deletion). `index` may be past the last entry: the
    /// log becomes empty.
    pub(crate) fn forget_before(&mut self, index: u64) {
        if index <= self.first {
            return;
        }
        let dropped = (index - self.first).min(self.count);
        self.first += dropped;
        self.count -= dropped;
        if self.count == 0 {
            self.locs.clear();
            self.first = index;
            return;
        }
        // Keep the indexed entry at or before the new first one: reads of
        // it start there.
        while self.locs.len() > 1 && self.locs_first + self.stride <= self.first {
            self.locs.pop_front();
            self.locs_first += self.stride;
        }
    }

    /// Whether a sealed segment holds only entries before `index`.
    pub(crate) fn has_segments_before(&self, index: u64) -> bool {
        self.segments
            .windows(2)
            .next()
            .is_some_and(|w| w[1].first_index <= index)
    }

    /// Deletes the sealed segments that hold only entries before `index`.
    /// The caller has made the truncation point durable first: a crash
    /// after this must not need them.
    pub(crate) fn remove_segments_before(&mut self, index: u64) -> Result<usize, StorageError> {
        let paths = self.detach_segments_before(index);
        remove_segment_files(&self.dir, &paths)
    }

    /// Takes the sealed segments that hold only entries before `index` out
    /// of this log and returns their paths; the files stay on disk for the
    /// caller to delete ([`remove_segment_files`]) once the truncation point
    /// is durable. Until then a crash finds them, before the truncation
    /// point, and a later compaction deletes them.
    pub(crate) fn detach_segments_before(&mut self, index: u64) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        while self.segments.len() > 1 && self.segments[1].first_index <= index {
            paths.push(self.segments.remove(0).path);
        }
        paths
    }

    /// The directory of this log's segment files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Values of entries `[lo, hi)`, each read with its header, which must
    /// still name the entry. The caller keeps `[lo, hi)` within the log.
    pub(crate) fn read(&self, lo: u64, hi: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out = Vec::with_capacity(hi.saturating_sub(lo) as usize);
        self.read_each(lo, hi, |_, value| {
            out.push(value.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with each entry's index and value in `[lo, hi)`, in order,
    /// from one read per run of entries in the same segment, into a buffer
    /// reused by the thread: the Raft log reads back every committed entry
    /// to apply it, and a fresh zeroed buffer per read (one large
    /// allocation, often new pages to fault in) was a visible cost.
    pub(crate) fn read_each(
        &self,
        lo: u64,
        hi: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if self.stride > 1 {
            let mut failed = None;
            if lo < hi {
                self.scan(lo, hi, |index, _, value| {
                    if failed.is_none() {
                        if let Err(e) = f(index, value) {
                            failed = Some(e);
                        }
                    }
                })?;
            }
            return failed.map_or(Ok(()), Err);
        }
        let mut index = lo;
        while index < hi {
            let first = self
                .loc(index)
                .ok_or_else(|| corrupt(format!("{} entry {index} missing", self.label)))?;
            // One read for the run of records in the same segment.
            let mut last = first;
            let mut end_index = index + 1;
            while end_index < hi {
                match self.loc(end_index) {
                    Some(l) if l.pos == first.pos && l.offset == last.end() => {
                        last = l;
                        end_index += 1;
                    }
                    _ => break,
                }
            }
            let seg = &self.segments[first.pos];
            let run_len = (last.end() - first.offset) as usize;
            with_read_buffer(run_len, |buf| {
                seg.file.read_exact_at(buf, first.offset).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        corrupt(format!(
                            "{} entry {index}: segment shorter than its index",
                            self.label
                        ))
                    } else {
                        e.into()
                    }
                })?;
                let mut at = 0usize;
                for i in index..end_index {
                    // The headers were checked at open, but the file may
                    // have changed since: one whose length now runs past
                    // its index leaves the next header out of the run.
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(buf.get(at..at + HEADER_LEN).ok_or_else(|| {
                        corrupt(format!(
                            "{} entry {i}: record header runs past its index",
                            self.label
                        ))
                    })?);
                    let len = match parse_header(&h) {
                        Ok(Some((len, got))) if got == i => len as usize,
                        _ => {
                            return Err(corrupt(format!(
                                "{} entry {i}: record header damaged",
                                self.label
                            )))
                        }
                    };
                    at += HEADER_LEN;
                    let value = buf.get(at..at + len).ok_or_else(|| {
                        corrupt(format!(
                            "{} entry {i}: record runs past its index",
                            self.label
                        ))
                    })?;
                    f(i, value)?;
                    at += len;
                }
                Ok(())
            })?;
            index = end_index;
        }
        Ok(())
    }

    /// Replaces the value of entry `index` in place with one of the same
    /// length (a repair, or a test's damage). Not durable until `sync`.
    pub(crate) fn overwrite(&mut self, index: u64, value: &[u8]) -> Result<(), StorageError> {
        let loc = self
            .find(index)?
            .ok_or(StorageError::Unavailable { index })?;
        if value.len() != loc.len as usize {
            return Err(StorageError::Invalid(format!(
                "{} entry {index}: replacement is {} bytes, the record {}",
                self.label,
                value.len(),
                loc.len
            )));
        }
        let seg = &mut self.segments[loc.pos];
        seg.file
            .write_all_at(value, loc.offset + HEADER_LEN as u64)?;
        // The record may be in a sealed, synced segment: sync it at the next
        // barrier like the active one.
        seg.rewrites += 1;
        Ok(())
    }

    /// The durability barrier: every segment with unsynced bytes (normally
    /// just the active one) is fdatasynced.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        let pending = self.begin_sync()?;
        if let Err(e) = pending.run() {
            self.fail_sync(&e);
            return Err(e);
        }
        self.finish_sync(&pending);
        Ok(())
    }

    /// Records that a barrier's fdatasync failed: every later barrier
    /// fails too (see `sync_failed`).
    pub(crate) fn fail_sync(&mut self, e: &StorageError) {
        if self.sync_failed.is_none() {
            self.sync_failed = Some(e.to_string());
        }
    }

    /// The first half of [`Wal::sync`]: what the barrier must make durable,
    /// as of now. Run it ([`PendingSync::run`]) without holding whatever
    /// guards this log, then record it with [`Wal::finish_sync`], or a
    /// failure with [`Wal::fail_sync`]. Only bytes written before this call
    /// count as synced afterwards. Fails once any barrier has failed.
    pub(crate) fn begin_sync(&self) -> Result<PendingSync, StorageError> {
        if let Some(first) = &self.sync_failed {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "an earlier fdatasync of the {} failed ({first}); writes since then \
                 cannot be made durable by this process: restart the node",
                self.label
            ))));
        }
        Ok(PendingSync {
            simulation: self.simulation,
            segments: self
                .segments
                .iter()
                .filter(|s| s.synced_len < s.len || s.rewrites != s.synced_rewrites)
                .map(|s| SyncTarget {
                    file: s.file.clone(),
                    len: s.len,
                    rewrites: s.rewrites,
                    cuts: s.cuts,
                })
                .collect(),
        })
    }

    /// Records a [`PendingSync`] that ran successfully. Only a segment that
    /// is still the same file and was not cut meanwhile gets credit, so a
    /// barrier that overlapped a truncation, a reset or another barrier
    /// never marks bytes durable that it did not sync.
    pub(crate) fn finish_sync(&mut self, done: &PendingSync) {
        for t in &done.segments {
            let Some(s) = self
                .segments
                .iter_mut()
                .find(|s| Arc::ptr_eq(&s.file, &t.file))
            else {
                continue;
            };
            if s.cuts != t.cuts {
                continue;
            }
            s.synced_len = s.synced_len.max(t.len.min(s.len));
            s.synced_rewrites = s.synced_rewrites.max(t.rewrites);
        }
    }

    /// Starts over, empty, under `generation`, with the next append at any
    /// index. The caller has recorded `generation` durably first, so a crash
    /// midway leaves old files that the next open removes.
    pub(crate) fn reset(&mut self, generation: u64) -> Result<(), StorageError> {
        if generation <= self.generation {
            return Err(StorageError::Invalid(format!(
                "{} generation {generation} is not after {}",
                self.label, self.generation
            )));
        }
        let previous = self.generation;
        self.generation = generation;
        if let Err(e) = self.create_segment(1, 0) {
            self.generation = previous;
            return Err(e);
        }
        let old = self.segments.len() - 1;
        self.locs.clear();
        self.first = 0;
        self.count = 0;
        for s in self.segments.drain(..old) {
            std::fs::remove_file(s.path)?;
        }
        sync_dir(&self.dir)
    }

    /// (segment files, bytes their records take). The last segment may
    /// also hold up to [`SEGMENT_PREALLOC_BYTES`] of reserved space.
    pub(crate) fn disk_usage(&self) -> (usize, u64) {
        (
            self.segments.len(),
            self.segments.iter().map(|s| s.len).sum(),
        )
    }

    /// Simulation: writes what a crash would leave of every segment under
    /// `data_dir`: the synced part, and of the unsynced rest a prefix that
    /// usually ends inside a record (a torn write), as a real crash may
    /// persist some unsynced writes. Which prefix is a pure function of the
    /// lengths, so a seed replays.
    pub(crate) fn copy_durable_to(&self, data_dir: &Path) -> Result<(), StorageError> {
        let to = data_dir.join(self.dir_name);
        std::fs::create_dir_all(&to)?;
        for s in &self.segments {
            let keep = s.synced_len + (s.len - s.synced_len) / 2;
            let mut buf = vec![0u8; keep as usize];
            s.file.read_exact_at(&mut buf, 0)?;
            std::fs::write(to.join(segment_name(self.generation, s.seq)), buf)?;
        }
        Ok(())
    }
}

/// Largest read buffer a thread keeps between reads. A run longer than
/// this (a follower catching up far behind, a repair) gets a buffer of its
/// own, so one large read does not pin memory in every reading thread.
const MAX_KEPT_READ_BUFFER: usize = 4 * 1024 * 1024;

thread_local! {
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a buffer of exactly `len` bytes (contents unspecified: the
/// caller fills it), reused by this thread when `len` is at most
/// `MAX_KEPT_READ_BUFFER`.
fn with_read_buffer<T>(
    len: usize,
    f: impl FnOnce(&mut [u8]) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    if len > MAX_KEPT_READ_BUFFER {
        return f(&mut vec![0u8; len]);
    }
    READ_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                // Exactly: doubling would keep up to twice the cap.
                let grow = len - buf.len();
                buf.reserve_exact(grow);
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        // Re-entered from inside `f` (never today): a buffer of its own.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as `RaftLog` writes them: sealed (checksum ++ payload).
    fn rec(index: u64, len: usize) -> (u64, Vec<u8>) {
        (
            index,
            crate::codec::seal_value(&vec![(index % 251) as u8; len]),
        )
    }

    fn open(dir: &Path) -> Wal {
        Wal::open(dir, 1, false).unwrap().0
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(WAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn appends_survive_reopen_and_read_back_exactly() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        assert_eq!(w.last_index(), None);
        let recs: Vec<_> = (5..=20).map(|i| rec(i, 10 + i as usize)).collect();
        w.append(&recs[..4]).unwrap();
        w.append(&recs[4..]).unwrap();
        w.sync().unwrap();
        assert_eq!(
            w.read(5, 21).unwrap(),
            recs.iter().map(|r| r.1.clone()).collect::<Vec<_>>()
        );
        drop(w);
        let (w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!(report, OpenReport::default());
        assert_eq!((w.first_index(), w.last_index()), (Some(5), Some(20)));
        assert_eq!(w.read(9, 10).unwrap(), vec![recs[4].1.clone()]);
    }

    /// A barrier covers what was written when it began: bytes appended while
    /// its fdatasyncs ran stay unsynced, and a rewrite made meanwhile still
    /// needs the next barrier.
    #[test]
    fn a_sync_counts_only_what_was_written_before_it_began() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        let recs: Vec<_> = (1..=3).map(|i| rec(i, 20)).collect();
        w.append(&recs[..2]).unwrap();
        let pending = w.begin_sync().unwrap();
        w.append(&recs[2..]).unwrap();
        w.overwrite(1, &recs[0].1).unwrap();
        pending.run().unwrap();
        w.finish_sync(&pending);
        let active = w.segments.last().unwrap();
        assert!(
            active.synced_len < active.len,
            "the third record was written after the barrier began"
        );
        assert_ne!(active.rewrites, active.synced_rewrites);
        w.sync().unwrap();
        let active = w.segments.last().unwrap();
        assert_eq!(active.synced_len, active.len);
        assert_eq!(active.rewrites, active.synced_rewrites);
        assert!(
            w.begin_sync().unwrap().segments.is_empty(),
            "nothing left to sync"
        );
    }

    /// A barrier that overlaps a cut of its segment credits nothing: the
    /// bytes written after the cut, at offsets it did sync before, are
    /// still unsynced, and so is a segment created anew under a sequence
    /// number the barrier saw.
    #[test]
    fn a_sync_overlapping_a_cut_or_a_new_segment_credits_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        let recs: Vec<_> = (1..=4).map(|i| rec(i, 20)).collect();
        w.append(&recs[..3]).unwrap();
        let pending = w.begin_sync().unwrap();
        w.truncate_from(2).unwrap();
        w.append(&[rec(2, 20), rec(3, 20)]).unwrap();
        pending.run().unwrap();
        w.finish_sync(&pending);
        let active = w.segments.last().unwrap();
        assert!(
            active.synced_len < active.len,
            "records rewritten after the cut must wait for the next barrier"
        );
        w.sync().unwrap();

        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.max_segment_bytes = 2 * (HEADER_LEN as u64 + 8 + 20);
        let recs: Vec<_> = (1..=5).map(|i| rec(i, 20)).collect();
        w.append(&recs).unwrap();
        assert_eq!(w.segments.len(), 3, "two records per segment");
        let pending = w.begin_sync().unwrap();
        w.truncate_from(3).unwrap();
        assert_eq!(w.segments.len(), 2, "the cut removed the third segment");
        w.append(&recs[2..]).unwrap();
        assert_eq!(w.segments.len(), 3, "a new third segment, same number");
        pending.run().unwrap();
        w.finish_sync(&pending);
        let third = w.segments.last().unwrap();
        assert!(
            third.len > 0 && third.synced_len == 0,
            "the barrier synced the removed file, not this one"
        );

        // A reset starts a new generation whose first segment is numbered
        // like the old first one, which the barrier covers.
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.append(&[rec(1, 20)]).unwrap();
        let pending = w.begin_sync().unwrap();
        assert_eq!(pending.segments.len(), 1);
        w.reset(2).unwrap();
        w.append(&[rec(40, 20)]).unwrap();
        pending.run().unwrap();
        w.finish_sync(&pending);
        let fresh = w.segments.last().unwrap();
        assert!(
            fresh.len > 0 && fresh.synced_len == 0,
            "the barrier synced the old generation's files, not this one"
        );
    }

    /// After one failed fdatasync no barrier succeeds again: the kernel may
    /// have dropped the pages it could not write, and a later fdatasync
    /// would report success without them.
    #[test]
    fn after_a_failed_sync_every_later_barrier_fails() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.append(&[rec(1, 20)]).unwrap();
        w.fail_sync(&StorageError::Invalid("simulated EIO".into()));
        let err = w.sync().expect_err("a barrier after a failed one");
        assert!(err.to_string().contains("simulated EIO"), "{err}");
        assert!(w.begin_sync().is_err());
        w.append(&[rec(2, 20)]).unwrap();
        assert!(w.sync().is_err(), "still failing after more writes");
    }

    /// A batch that would push a segment past what 32-bit offsets address
    /// continues in new segments (the limit lowered to a few records here);
    /// every record reads back, also after reopening, and truncating into
    /// an earlier segment drops the later ones.
    #[test]
    fn a_batch_past_the_segment_limit_continues_in_new_segments() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.max_segment_bytes = 3 * (HEADER_LEN as u64 + 8 + 40);
        let recs: Vec<_> = (1..=10).map(|i| rec(i, 40)).collect();
        w.append(&recs[..1]).unwrap();
        w.append(&recs[1..]).unwrap();
        w.sync().unwrap();
        assert_eq!(segment_files(d.path()).len(), 4, "3 + 3 + 3 + 1 records");
        let values: Vec<_> = recs.iter().map(|r| r.1.clone()).collect();
        assert_eq!(w.read(1, 11).unwrap(), values);
        assert_eq!(w.value_len(7), Some(48));
        drop(w);
        let mut w = open(d.path());
        assert_eq!((w.first_index(), w.last_index()), (Some(1), Some(10)));
        assert_eq!(w.read(2, 9).unwrap(), values[1..8].to_vec());
        w.truncate_from(5).unwrap();
        assert_eq!(segment_files(d.path()).len(), 2);
        assert_eq!(w.last_index(), Some(4));
        w.append(&[rec(5, 40)]).unwrap();
        assert_eq!(
            w.read(4, 6).unwrap(),
            vec![values[3].clone(), values[4].clone()]
        );
        drop(w);
        let w = open(d.path());
        assert_eq!((w.first_index(), w.last_index()), (Some(1), Some(5)));
    }

    /// A sparse index (every `stride`-th location kept) answers exactly
    /// like the records written: random appends over many small segments,
    /// forgetting and removing old segments, truncating, overwriting in
    /// place and reopening, checked against a model after every step.
    #[test]
    fn a_sparse_index_reads_every_record_like_the_model() {
        for stride in [1u64, 2, 5, 64] {
            for seed in 0..12u64 {
                sparse_index_against_model(stride, seed);
            }
        }
    }

    fn sparse_index_against_model(stride: u64, seed: u64) {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        };
        let d = tempfile::tempdir().unwrap();
        let open_sparse = |dir: &Path| {
            let (mut w, _) = Wal::open_in(dir, WAL_DIR, "test log", 1, false, stride).unwrap();
            // Odd seeds: records of up to 90 KB in larger segments, so that
            // reads refill their 64 KiB block and cross it mid-record.
            w.max_segment_bytes = if seed.is_multiple_of(2) { 400 } else { 300_000 };
            w
        };
        let mut w = open_sparse(d.path());
        // Every record on disk (what a reopen finds), and the first retained.
        let mut all: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        let mut first = 1 + next(3);
        let ctx = |step: usize| format!("stride {stride} seed {seed} step {step}");
        for step in 0..120 {
            let last = all.keys().next_back().copied().filter(|l| *l >= first);
            match next(10) {
                0..=3 => {
                    let from = last.map_or(first, |l| l + 1);
                    let batch: Vec<_> = (from..from + 1 + next(9))
                        .map(|i| match next(8) {
                            0 if seed % 2 == 1 => rec(i, 20_000 + next(70_000) as usize),
                            _ => rec(i, next(60) as usize),
                        })
                        .collect();
                    w.append(&batch).unwrap();
                    all.extend(batch);
                }
                4 if last.is_some() => {
                    let to = first + next(last.unwrap() - first + 2);
                    w.forget_before(to);
                    first = to;
                    w.sync().unwrap();
                    w.remove_segments_before(first).unwrap();
                    let on_disk_from = w.segments[0].first_index;
                    all.retain(|i, _| *i >= on_disk_from);
                }
                5 if last.is_some() => {
                    let from = first + next(last.unwrap() - first + 1);
                    w.truncate_from(from).unwrap();
                    all.retain(|i, _| *i < from);
                }
                6 if last.is_some() => {
                    let i = first + next(last.unwrap() - first + 1);
                    // Sealed, so a reopen does not take it for a torn write.
                    let overhead = crate::codec::seal_value(&[]).len();
                    let value = crate::codec::seal_value(&vec![
                        (step % 251) as u8;
                        all[&i].len() - overhead
                    ]);
                    w.overwrite(i, &value).unwrap();
                    all.insert(i, value);
                }
                7 => {
                    w.sync().unwrap();
                    drop(w);
                    w = open_sparse(d.path());
                    // A reopen finds what the files hold; forgetting is
                    // the caller's to repeat (the audit trail's marker).
                    assert_eq!(w.first_index(), all.keys().next().copied(), "{}", ctx(step));
                    w.forget_before(first);
                }
                _ => {}
            }
            let last = all.keys().next_back().copied().filter(|l| *l >= first);
            assert_eq!(w.last_index(), last, "{}", ctx(step));
            let Some(last) = last else {
                assert_eq!(w.first_index(), None, "{}", ctx(step));
                continue;
            };
            assert_eq!(w.first_index(), Some(first), "{}", ctx(step));
            let lo = first + next(last - first + 1);
            let hi = lo + next(last - lo + 2);
            let want: Vec<_> = (lo..hi).map(|i| all[&i].clone()).collect();
            assert_eq!(
                w.read(lo, hi).unwrap(),
                want,
                "{} read {lo}..{hi}",
                ctx(step)
            );
            assert_eq!(
                w.value_len(lo),
                Some(all[&lo].len() as u32),
                "{}",
                ctx(step)
            );
            assert_eq!(w.value_len(last + 1), None, "{}", ctx(step));
            assert!(
                w.locs.len() as u64 <= w.count / stride + 2,
                "{}: {} locations kept for {} records",
                ctx(step),
                w.locs.len(),
                w.count
            );
        }
    }

    #[test]
    fn append_must_follow_and_be_consecutive() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.append(&[rec(1, 3), rec(2, 3)]).unwrap();
        assert!(w.append(&[rec(4, 3)]).is_err());
        assert!(w.append(&[rec(3, 3), rec(5, 3)]).is_err());
        assert_eq!(w.last_index(), Some(2));
    }

    #[test]
    fn torn_tail_of_the_last_segment_is_cut() {
        let (d, file, _, intact) = three_records(100);
        let full = intact.len() as u64;
        // Every cut inside the last record (header or value) is torn.
        for cut in [full - 1, full - 50, full - 100, full - 110] {
            let f = OpenOptions::new().write(true).open(&file).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let (w, report) = Wal::open(d.path(), 1, false).unwrap();
            assert_eq!(w.last_index(), Some(2), "cut at {cut}");
            assert!(report.torn_bytes > 0);
            drop(w);
            // Put the third record back for the next cut.
            let mut w = open(d.path());
            w.append(&[rec(3, 100)]).unwrap();
            w.sync().unwrap();
        }
        // Zeros where a record should be, in a file without reserved space
        // (extended but not written): torn, cut, reported; the next append
        // lands right after the last record.
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(full + 64).unwrap();
        drop(f);
        let (mut w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!((w.last_index(), report.torn_bytes), (Some(3), 64));
        w.append(&[rec(4, 100)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!((w.last_index(), report.torn_bytes), (Some(4), 0));
        assert_eq!(w.read(3, 5).unwrap(), vec![rec(3, 100).1, rec(4, 100).1]);
    }

    /// The read buffer a thread keeps is reused across reads: a shorter
    /// read after a longer one sees only its own bytes, and a segment cut
    /// short under a live log reads as damage, not as an earlier read's
    /// leftovers.
    #[test]
    fn a_reused_read_buffer_never_shows_an_earlier_reads_bytes() {
        let (d, file, _, intact) = three_records(3000);
        let w = open(d.path());
        assert_eq!(
            w.read(1, 4).unwrap(),
            vec![rec(1, 3000).1, rec(2, 3000).1, rec(3, 3000).1]
        );
        assert_eq!(w.read(3, 4).unwrap(), vec![rec(3, 3000).1]);
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(intact.len() as u64 - 10).unwrap();
        drop(f);
        assert_eq!(w.read(1, 2).unwrap(), vec![rec(1, 3000).1]);
        let err = w.read(3, 4).unwrap_err();
        assert!(
            err.is_corrupt(),
            "a short segment must read as damage, got {err:?}"
        );
    }

    #[test]
    fn a_damaged_header_is_corrupt_not_truncated() {
        let (d, file, _, mut bytes) = three_records(100);
        bytes[HEADER_LEN + rec(1, 100).1.len() + 5] ^= 1; // header of entry 2
        std::fs::write(&file, &bytes).unwrap();
        let err = Wal::open(d.path(), 1, false).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert_not_cut(&file, &bytes);
    }

    /// Three records with values of `len` bytes, synced in a new
    /// directory; returns it, the segment file, the offset of each record
    /// and the file's bytes. The file is cut to what it holds, as one
    /// written without reserved space is, so that its end is the records'.
    fn three_records(len: usize) -> (tempfile::TempDir, PathBuf, Vec<usize>, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.append(&[rec(1, len), rec(2, len), rec(3, len)]).unwrap();
        w.sync().unwrap();
        let offsets = w.locs.iter().map(|l| l.offset as usize).collect();
        let held = w.active().len;
        drop(w);
        let file = segment_files(d.path()).pop().unwrap();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(held)
            .unwrap();
        let intact = std::fs::read(&file).unwrap();
        (d, file, offsets, intact)
    }

    /// The file starts with `bytes` and, past them, holds only zeros
    /// (space reserved again at open): nothing of `bytes` was cut.
    fn assert_not_cut(file: &Path, bytes: &[u8]) {
        let now = std::fs::read(file).unwrap();
        assert!(now.len() >= bytes.len(), "cut to {} bytes", now.len());
        assert!(now[..bytes.len()] == *bytes, "bytes changed");
        assert!(
            now[bytes.len()..].iter().all(|&b| b == 0),
            "not zeros after"
        );
    }

    /// Zeros the disk sector that holds byte `at`, or the one after it.
    fn zero_sector(bytes: &[u8], at: usize, next: bool) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let sector = (at / SECTOR_BYTES + usize::from(next)) * SECTOR_BYTES;
        out[sector..sector + SECTOR_BYTES].fill(0);
        out
    }

    #[test]
    fn damage_followed_by_intact_records_is_never_cut() {
        // A zeroed sector looks like a torn write, but an intact record 3
        // follows: bit rot or a lost write, and cutting would drop
        // acknowledged entries.
        // Records of about 1 KiB span sector boundaries.
        let (d, file, offsets, intact) = three_records(1000);
        // In record 2's header: its length is lost, nothing after it can be
        // found, so the log is refused.
        let bytes = zero_sector(&intact, offsets[1], false);
        std::fs::write(&file, &bytes).unwrap();
        let err = Wal::open(d.path(), 1, false).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert_not_cut(&file, &bytes);
        // In record 2's value: kept as a damaged entry, record 3 too.
        let bytes = zero_sector(&intact, offsets[1], true);
        std::fs::write(&file, &bytes).unwrap();
        let (w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!((w.last_index(), report.torn_bytes), (Some(3), 0));
        assert_not_cut(&file, &bytes);
    }

    #[test]
    fn the_last_record_torn_or_damaged() {
        // Records of about 1 KiB span sector boundaries.
        let (d, file, offsets, intact) = three_records(1000);
        // A sector of the last record never written: torn, cut.
        let bytes = zero_sector(&intact, offsets[2], true);
        std::fs::write(&file, &bytes).unwrap();
        let (w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!(w.last_index(), Some(2));
        assert_eq!(report.torn_bytes, (bytes.len() - offsets[2]) as u64);
        drop(w);
        // A flipped bit in the last record, no zeros: damage, kept (read
        // back as stored, for `RaftLog` to report and a peer to repair).
        let mut bytes = intact.clone();
        bytes[offsets[2] + HEADER_LEN + 100] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let (w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!((w.last_index(), report.torn_bytes), (Some(3), 0));
        let stored = &bytes[offsets[2] + HEADER_LEN..];
        assert_eq!(w.read(3, 4).unwrap(), vec![stored.to_vec()]);
    }

    #[test]
    fn a_damaged_value_is_read_back_as_is() {
        // Values are sealed by the caller; the WAL only frames them.
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.append(&[rec(1, 10), rec(2, 10)]).unwrap();
        let len = rec(1, 10).1.len();
        w.overwrite(1, &vec![9u8; len]).unwrap();
        assert!(w.overwrite(1, &vec![9u8; len + 1]).is_err());
        w.sync().unwrap();
        drop(w);
        let w = open(d.path());
        assert_eq!(w.read(1, 2).unwrap(), vec![vec![9u8; len]]);
    }

    #[test]
    fn truncate_rotate_forget_and_remove() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        let big = (SEGMENT_TARGET_BYTES / 3) as usize;
        for i in 1..=7 {
            w.append(&[rec(i, big)]).unwrap();
        }
        w.sync().unwrap();
        // 3 records per segment before each rotation: 1-3, 4-6, 7.
        assert_eq!(segment_files(d.path()).len(), 3);
        // Truncating into the second segment removes the third.
        w.truncate_from(5).unwrap();
        assert_eq!(segment_files(d.path()).len(), 2);
        assert_eq!(w.last_index(), Some(4));
        w.append(&[rec(5, 7)]).unwrap();
        w.sync().unwrap();
        w.forget_before(5);
        assert_eq!(w.first_index(), Some(5));
        assert!(w.has_segments_before(5));
        assert_eq!(w.remove_segments_before(5).unwrap(), 1);
        assert!(!w.has_segments_before(5));
        drop(w);
        let w = open(d.path());
        assert_eq!((w.first_index(), w.last_index()), (Some(4), Some(5)));
        assert_eq!(w.read(5, 6).unwrap(), vec![rec(5, 7).1]);
    }

    #[test]
    fn reset_starts_a_new_generation_and_open_drops_old_files() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        w.append(&[rec(1, 10), rec(2, 10)]).unwrap();
        w.sync().unwrap();
        w.reset(2).unwrap();
        assert_eq!(w.last_index(), None);
        w.append(&[rec(40, 10)]).unwrap();
        w.sync().unwrap();
        drop(w);
        // A crash after the metadata named generation 3 but before the
        // reset: generation 2's files are dropped at open.
        let (w, report) = Wal::open(d.path(), 3, false).unwrap();
        assert_eq!((w.last_index(), report.stale_files), (None, 1));
        drop(w);
        // Files newer than the metadata are refused.
        assert!(Wal::open(d.path(), 2, false).unwrap_err().is_corrupt());
    }

    #[test]
    fn simulation_keeps_only_what_was_synced() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut w = Wal::open(d1.path(), 1, true).unwrap().0;
        w.append(&[rec(1, 10), rec(2, 10)]).unwrap();
        w.sync().unwrap();
        w.append(&[rec(3, 10)]).unwrap();
        w.copy_durable_to(d2.path()).unwrap();
        // Half of the unsynced record survives: a torn tail, cut at open.
        let (w2, report) = Wal::open(d2.path(), 1, true).unwrap();
        assert_eq!(w2.last_index(), Some(2));
        assert!(report.torn_bytes > 0);
    }

    /// Writes the only segment file of a fresh log directory: `records`
    /// framed like `write_records` (valid header CRCs, sealed values), so
    /// open reaches the checks after the framing.
    fn forged_segment(seq: u64, records: &[(u64, Vec<u8>)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(WAL_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        for (index, value) in records {
            bytes.extend_from_slice(&header(value.len() as u32, *index));
            bytes.extend_from_slice(value);
        }
        std::fs::write(dir.join(segment_name(1, seq)), bytes).unwrap();
        d
    }

    /// A record whose index is past `MAX_RECORD_INDEX` is damage: before,
    /// the next record's expected index (`last + 1`) overflowed, a panic in
    /// a debug build.
    #[test]
    fn a_record_index_out_of_range_is_corrupt_at_open() {
        for (first, second) in [(u64::MAX, 0), (MAX_RECORD_INDEX + 1, MAX_RECORD_INDEX + 2)] {
            let d = forged_segment(1, &[rec(first, 10), rec(second, 10)]);
            let err = Wal::open(d.path(), 1, false).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
        // The largest index allowed still opens and reads.
        let d = forged_segment(1, &[rec(MAX_RECORD_INDEX, 10)]);
        let w = open(d.path());
        assert_eq!(w.last_index(), Some(MAX_RECORD_INDEX));
        assert_eq!(w.next_index(), MAX_RECORD_INDEX + 1);
        assert_eq!(
            w.read(MAX_RECORD_INDEX, MAX_RECORD_INDEX + 1).unwrap(),
            vec![rec(MAX_RECORD_INDEX, 10).1]
        );
    }

    /// A segment file named with the largest sequence number is refused at
    /// open: before, the next rotation computed `seq + 1` and panicked in a
    /// debug build.
    #[test]
    fn a_segment_sequence_number_out_of_range_is_corrupt_at_open() {
        let d = forged_segment(u64::MAX, &[rec(1, 10)]);
        match Wal::open(d.path(), 1, false) {
            Err(e) => assert!(e.is_corrupt(), "{e}"),
            Ok((mut w, _)) => {
                // What the unfixed code reached: a rotation.
                w.max_segment_bytes = 64;
                let result = w.append(&[rec(2, 100)]);
                panic!("opened a segment numbered u64::MAX (append: {result:?})");
            }
        }
    }

    /// An append of an index past `MAX_RECORD_INDEX` is refused before any
    /// arithmetic on it (the consecutiveness check computed `index + 1`).
    #[test]
    fn an_append_past_the_index_range_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut w = open(d.path());
        for records in [
            vec![rec(u64::MAX, 3), rec(0, 3)],
            vec![rec(MAX_RECORD_INDEX + 1, 3)],
        ] {
            let err = w.append(&records).unwrap_err();
            assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
        }
        assert_eq!(w.last_index(), None);
        assert_eq!(
            std::fs::metadata(&segment_files(d.path())[0])
                .unwrap()
                .len(),
            0
        );
    }

    /// A header rewritten on disk after open (valid CRC, same index, a
    /// length that swallows the records after it) is damage when read:
    /// before, the next header of the run was sliced out of the read
    /// buffer's range, a panic in every build.
    #[test]
    fn a_header_rewritten_after_open_is_corrupt_when_read() {
        let (d, file, offsets, _) = three_records(40);
        let w = open(d.path());
        let value_len = rec(1, 40).1.len();
        // Runs to 8 bytes before the end of the file: the value still fits
        // in the run that is read, the header after it does not.
        let forged_len = 3 * (HEADER_LEN + value_len) - HEADER_LEN - 8;
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&header(forged_len as u32, 1), offsets[0] as u64)
            .unwrap();
        drop(f);
        let err = w.read(1, 4).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        // The records after it are still read on their own.
        assert_eq!(w.read(3, 4).unwrap(), vec![rec(3, 40).1]);
    }

    /// Whether files in `dir` can have space reserved; where they cannot,
    /// the preallocation tests check recovery only, and say so.
    fn reserves_space(dir: &Path) -> bool {
        let probe = File::create(dir.join("reserve-probe")).unwrap();
        let ok = reserve(&probe, 0, 4096);
        if !ok {
            eprintln!(
                "SKIPPED: {} cannot reserve space; file lengths not checked",
                dir.display()
            );
        }
        ok
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_new_segment_reserves_its_space_and_the_log_ends_at_its_last_record() {
        let d = tempfile::tempdir().unwrap();
        let reserving = reserves_space(d.path());
        let mut w = open(d.path());
        w.append(&[rec(1, 100), rec(2, 100), rec(3, 100)]).unwrap();
        w.sync().unwrap();
        let held = w.active().len;
        drop(w);
        let file = segment_files(d.path()).pop().unwrap();
        if reserving {
            assert_eq!(file_len(&file), SEGMENT_PREALLOC_BYTES);
        }
        let (mut w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!((w.last_index(), report.torn_bytes), (Some(3), 0));
        assert_eq!(w.active().len, held, "the log ends at its last record");
        if reserving {
            assert_eq!(file_len(&file), SEGMENT_PREALLOC_BYTES, "nothing cut");
        }
        w.append(&[rec(4, 100)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let w = open(d.path());
        assert_eq!(
            w.read(1, 5).unwrap(),
            (1..=4).map(|i| rec(i, 100).1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_sealed_segment_is_cut_back_to_what_it_holds() {
        let d = tempfile::tempdir().unwrap();
        let reserving = reserves_space(d.path());
        let mut w = open(d.path());
        w.max_segment_bytes = 2 * (HEADER_LEN as u64 + rec(1, 20).1.len() as u64);
        for i in 1..=5 {
            w.append(&[rec(i, 20)]).unwrap();
        }
        w.sync().unwrap();
        let sealed: Vec<u64> = w.segments[..w.segments.len() - 1]
            .iter()
            .map(|s| s.len)
            .collect();
        let reserved = w.prealloc_bytes();
        drop(w);
        let files = segment_files(d.path());
        assert_eq!(files.len(), 3, "{files:?}");
        for (path, held) in files.iter().zip(&sealed) {
            assert_eq!(file_len(path), *held, "{}", path.display());
        }
        if reserving {
            assert_eq!(file_len(&files[2]), reserved);
        }
        let w = open(d.path());
        assert_eq!(
            w.read(1, 6).unwrap(),
            (1..=5).map(|i| rec(i, 20).1).collect::<Vec<_>>()
        );
    }

    /// A cut frees the stale records; the space reserved again reads as
    /// zeros, so a reopen never finds them behind the new tail.
    #[test]
    fn a_cut_inside_reserved_space_never_brings_stale_records_back() {
        let d = tempfile::tempdir().unwrap();
        let reserving = reserves_space(d.path());
        let mut w = open(d.path());
        w.append(&(1..=5).map(|i| rec(i, 100)).collect::<Vec<_>>())
            .unwrap();
        w.sync().unwrap();
        w.truncate_from(3).unwrap();
        let file = segment_files(d.path()).pop().unwrap();
        let cut = w.active().len;
        assert_eq!(file_len(&file), cut, "the stale records are gone");
        drop(w);
        let (mut w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!((w.last_index(), report.torn_bytes), (Some(2), 0));
        w.append(&[rec(3, 7)]).unwrap();
        w.sync().unwrap();
        if reserving {
            assert_eq!(file_len(&file), SEGMENT_PREALLOC_BYTES, "reserved again");
        }
        let tail = &std::fs::read(&file).unwrap()[w.active().len as usize..];
        assert!(
            tail.iter().all(|&b| b == 0),
            "nothing stale behind the tail"
        );
        drop(w);
        let w = open(d.path());
        assert_eq!(w.last_index(), Some(3));
        assert_eq!(w.read(3, 4).unwrap(), vec![rec(3, 7).1]);
    }

    /// A write torn inside reserved space (its header there, a sector of
    /// its value not) is cut, and the space is reserved again.
    #[test]
    fn a_torn_write_in_reserved_space_is_cut_and_the_space_reserved_again() {
        let d = tempfile::tempdir().unwrap();
        let reserving = reserves_space(d.path());
        let mut w = open(d.path());
        w.append(&[rec(1, 1000), rec(2, 1000), rec(3, 1000)])
            .unwrap();
        w.sync().unwrap();
        let third = w.locs[2].offset as usize;
        let third_end = third + HEADER_LEN + w.locs[2].len as usize;
        drop(w);
        let file = segment_files(d.path()).pop().unwrap();
        let bytes = zero_sector(&std::fs::read(&file).unwrap(), third, true);
        std::fs::write(&file, &bytes).unwrap();
        let (mut w, report) = Wal::open(d.path(), 1, false).unwrap();
        assert_eq!(w.last_index(), Some(2));
        let torn = if reserving { third_end } else { bytes.len() } - third;
        assert_eq!(
            report.torn_bytes, torn as u64,
            "reserved zeros are not torn bytes"
        );
        assert_eq!(file_len(&file), third as u64, "cut at the torn record");
        w.append(&[rec(3, 1000)]).unwrap();
        w.sync().unwrap();
        if reserving {
            assert_eq!(file_len(&file), SEGMENT_PREALLOC_BYTES, "reserved again");
        }
        drop(w);
        let w = open(d.path());
        assert_eq!(w.read(3, 4).unwrap(), vec![rec(3, 1000).1]);
    }
}
