//! A durable, append-only file of numbered records: the storage under the Raft log.
//!
//! Layout: one file of frames `[index u64][len u32][crc32 u32][payload]`, little endian,
//! indexes strictly increasing by one, payloads never empty. Appends are written and
//! `fsync`ed before [`LogFile::append`] returns, so an acknowledged record survives a crash.
//!
//! The file is zero-filled ahead of the frames, [`PREALLOCATE`] bytes at a time (as
//! PostgreSQL fills its WAL segments): an append then overwrites blocks the file already
//! has, and its `fdatasync` writes only those blocks, where extending the file would also
//! commit the file system's journal for the new size — about twice the cost on ext4, paid
//! twice (leader, then follower) by every Raft write a client waits for.
//!
//! On open, the frames are read up to the first that is not valid. That frame ends the log
//! if it is the mark of an append a crash cut short — it runs past the end of the file, or
//! one of its 512-byte sectors still reads as the zero fill (sectors are written whole or
//! not at all) — and anything after it is cut off; only the last append can be unfinished,
//! since each one is durable before the next starts. A bad frame without that mark (a
//! checksum failure over sectors that were all written) means the file is damaged and is
//! reported, never skipped.
//!
//! Purging the head (after a snapshot) only moves a logical start; the file is rewritten
//! without the purged frames once they are the larger part of it, through a temporary file
//! renamed over the old one, so a crash leaves either the old or the new file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8 + 4 + 4;

/// How far ahead of the frames the file is zero-filled.
pub const PREALLOCATE: u64 = 1 << 20;

/// The unit a disk writes whole: an unfinished write leaves each sector old or new.
const SECTOR: u64 = 512;

/// Errors of the log file.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is damaged at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("record {got} does not follow record {last} (records must be consecutive)")]
    Gap { last: u64, got: u64 },
}

/// Where one record lives in the file.
#[derive(Clone, Copy, Debug)]
struct Slot {
    index: u64,
    offset: u64,
    len: u32,
}

/// An open log file. Not thread-safe by itself; the owner serialises access.
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Records present in the file, in order; the purged head is already removed.
    slots: VecDeque<Slot>,
    /// Frames still in the file but purged.
    dead_frames: usize,
    /// Bytes of the file that hold live or dead frames.
    end: u64,
    /// The file's length: frames, then zeros.
    allocated: u64,
}

/// Appends one frame (`[index][len][crc32][payload]`) to `buf`.
fn encode_frame(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogFileError + '_ {
    move |source| LogFileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn fsync_dir(path: &Path) -> Result<(), LogFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl LogFile {
    /// Opens (or creates) the log at `path`, recovering from a torn tail.
    pub fn open(path: impl Into<PathBuf>) -> Result<LogFile, LogFileError> {
        let path = path.into();
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if !existed {
            fsync_dir(&path)?;
        }
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut slots = VecDeque::new();
        let mut reader = BufReader::new(&mut file);
        let mut offset = 0u64;
        let mut frame = Vec::new();
        while offset + HEADER as u64 <= len {
            frame.resize(HEADER, 0);
            reader.read_exact(&mut frame).map_err(io_err(&path))?;
            let index = u64::from_le_bytes(frame[0..8].try_into().unwrap());
            let rec_len = u32::from_le_bytes(frame[8..12].try_into().unwrap());
            let crc = u32::from_le_bytes(frame[12..16].try_into().unwrap());
            let frame_end = offset + HEADER as u64 + rec_len as u64;
            if frame_end > len {
                break; // an append cut short: the frame runs past the file
            }
            frame.resize(HEADER + rec_len as usize, 0);
            reader
                .read_exact(&mut frame[HEADER..])
                .map_err(io_err(&path))?;
            if rec_len == 0 || crc32fast::hash(&frame[HEADER..]) != crc {
                if unfinished(&frame, offset) {
                    break; // the zero fill after the last frame, or an append cut short
                }
                return Err(LogFileError::Corrupt {
                    path,
                    offset,
                    what: format!("checksum mismatch in record {index}"),
                });
            }
            if let Some(last) = slots.back().map(|s: &Slot| s.index) {
                if index != last + 1 {
                    return Err(LogFileError::Corrupt {
                        path,
                        offset,
                        what: format!("record {index} follows record {last}"),
                    });
                }
            }
            slots.push_back(Slot {
                index,
                offset,
                len: rec_len,
            });
            offset = frame_end;
        }
        // What follows the last frame is the zero fill, unless an append was cut short:
        // then the file is cut after the last frame (and filled again by the next append).
        let mut allocated = len;
        if offset < len && !zeros_from(&mut file, offset).map_err(io_err(&path))? {
            file.set_len(offset).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            allocated = offset;
        }
        Ok(LogFile {
            path,
            file,
            slots,
            dead_frames: 0,
            end: offset,
            allocated,
        })
    }

    /// First and last record indexes present, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        Some((self.slots.front()?.index, self.slots.back()?.index))
    }

    /// Appends consecutive records and makes them durable before returning.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), LogFileError> {
        if self.slots.is_empty() && self.dead_frames > 0 {
            // Every frame in the file is purged: start it afresh, so the new records need
            // not follow the purged ones (after a snapshot install they usually do not).
            self.file.set_len(0).map_err(io_err(&self.path))?;
            self.dead_frames = 0;
            self.end = 0;
            self.allocated = 0;
        }
        let mut buf = Vec::new();
        let mut new_slots = Vec::new();
        let mut last = self.slots.back().map(|s| s.index);
        let mut offset = self.end;
        for (index, payload) in records {
            if let Some(last) = last {
                if index != last + 1 {
                    return Err(LogFileError::Gap { last, got: index });
                }
            }
            assert!(!payload.is_empty(), "log records are never empty");
            encode_frame(&mut buf, index, payload);
            new_slots.push(Slot {
                index,
                offset,
                len: payload.len() as u32,
            });
            offset += (HEADER + payload.len()) as u64;
            last = Some(index);
        }
        if new_slots.is_empty() {
            return Ok(());
        }
        self.file
            .seek(SeekFrom::Start(self.end))
            .map_err(io_err(&self.path))?;
        if offset <= self.allocated {
            // Into the zero fill: only the written blocks need to reach the disk.
            self.file.write_all(&buf).map_err(io_err(&self.path))?;
            self.file.sync_data().map_err(io_err(&self.path))?;
        } else {
            // Past it: the frames and the next stretch of zeros in one write, and the new
            // length with them.
            let allocated = offset.div_ceil(PREALLOCATE) * PREALLOCATE;
            buf.resize(buf.len() + (allocated - offset) as usize, 0);
            self.file.write_all(&buf).map_err(io_err(&self.path))?;
            self.file.sync_all().map_err(io_err(&self.path))?;
            self.allocated = allocated;
        }
        self.end = offset;
        self.slots.extend(new_slots);
        Ok(())
    }

    /// Reads the records with indexes in `from..=to` that are present.
    pub fn read(&mut self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, LogFileError> {
        let Some((first, last)) = self.bounds() else {
            return Ok(vec![]);
        };
        let (from, to) = (from.max(first), to.min(last));
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let start = (from - first) as usize;
        for slot in self.slots.range(start..=start + (to - from) as usize) {
            let mut payload = vec![0u8; slot.len as usize];
            self.file
                .seek(SeekFrom::Start(slot.offset + HEADER as u64))
                .map_err(io_err(&self.path))?;
            self.file
                .read_exact(&mut payload)
                .map_err(io_err(&self.path))?;
            out.push((slot.index, payload));
        }
        Ok(out)
    }

    /// Removes records with index `>= index` (conflicting uncommitted entries), durably.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), LogFileError> {
        let Some((first, last)) = self.bounds() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        let keep = index.saturating_sub(first) as usize;
        let cut = self.slots.get(keep).map_or(self.end, |s| s.offset);
        self.slots.truncate(keep);
        // Cutting the length drops the frames and the zero fill after them: no removed
        // frame can be read back as a live one.
        self.file.set_len(cut).map_err(io_err(&self.path))?;
        self.file.sync_all().map_err(io_err(&self.path))?;
        self.end = cut;
        self.allocated = cut;
        Ok(())
    }

    /// Forgets records with index `<= index` (they are in a snapshot). Rewrites the file
    /// once purged frames outnumber live ones.
    pub fn purge_upto(&mut self, index: u64) -> Result<(), LogFileError> {
        while self.slots.front().is_some_and(|s| s.index <= index) {
            self.slots.pop_front();
            self.dead_frames += 1;
        }
        if self.dead_frames > 64 && self.dead_frames > self.slots.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with only the live records, atomically.
    fn compact(&mut self) -> Result<(), LogFileError> {
        let (first, last) = self.bounds().unwrap_or((1, 0));
        let live = self.read(first, last)?;
        let tmp = self.path.with_extension("compact");
        {
            let mut fresh = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut buf = Vec::new();
            for (index, payload) in &live {
                encode_frame(&mut buf, *index, payload);
            }
            fresh.write_all(&buf).map_err(io_err(&tmp))?;
            fresh.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        fsync_dir(&self.path)?;
        *self = LogFile::open(self.path.clone())?;
        Ok(())
    }
}

/// Whether the invalid `frame` (header and payload) read at file offset `at` is an
/// append cut short, i.e. shows a sector still holding the zero fill: its header all zero
/// (the fill after the last frame), the part of its header in a second sector all zero
/// when that part holds at least the checksum, or the part of its payload in some sector
/// all zero (payloads are JSON: no zero bytes). A frame whose sectors were all written
/// shows none of these.
fn unfinished(frame: &[u8], at: u64) -> bool {
    let zero = |bytes: &[u8]| bytes.iter().all(|&b| b == 0);
    let (header, payload) = frame.split_at(HEADER);
    if zero(header) {
        return true;
    }
    let split = ((at / SECTOR + 1) * SECTOR).saturating_sub(at) as usize;
    if split + 4 <= HEADER && zero(&header[split..]) {
        return true;
    }
    let mut start = 0usize;
    while start < payload.len() {
        let sector_end = ((at + (HEADER + start) as u64) / SECTOR + 1) * SECTOR;
        let end = payload.len().min((sector_end - at) as usize - HEADER);
        if zero(&payload[start..end]) {
            return true;
        }
        start = end;
    }
    false
}

/// Whether every byte of `file` from `offset` on is zero.
fn zeros_from(file: &mut File, offset: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("synapse-logfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("log")
    }

    fn append(log: &mut LogFile, range: std::ops::RangeInclusive<u64>) {
        let payloads: Vec<(u64, Vec<u8>)> = range
            .map(|i| (i, format!("entry {i}").into_bytes()))
            .collect();
        log.append(payloads.iter().map(|(i, p)| (*i, p.as_slice())))
            .unwrap();
    }

    #[test]
    fn records_survive_reopen() {
        let path = tmp("reopen");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=10);
        drop(log);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((1, 10)));
        assert_eq!(
            log.read(3, 4).unwrap(),
            vec![(3, b"entry 3".to_vec()), (4, b"entry 4".to_vec())]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_the_last_good_record() {
        let path = tmp("torn");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=5);
        drop(log);
        // A crash in the middle of writing record 6: half a frame at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&6u64.to_le_bytes()).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((1, 5)));
        append(&mut log, 6..=6);
        drop(log);
        assert_eq!(LogFile::open(&path).unwrap().bounds(), Some((1, 6)));
    }

    /// Overwrites the file at `offset` with `bytes` (what a crash left of a write).
    fn scribble(path: &Path, offset: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn appends_overwrite_the_zero_fill_and_extend_it_a_stretch_at_a_time() {
        let path = tmp("fill");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=3);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, PREALLOCATE, "the first append fills a whole stretch");
        append(&mut log, 4..=100);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        // A record that does not fit in what is left extends the fill.
        let big = vec![b'x'; PREALLOCATE as usize];
        log.append([(101u64, big.as_slice())]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * PREALLOCATE);
        drop(log);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((1, 101)));
        assert_eq!(log.read(101, 101).unwrap()[0].1, big);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * PREALLOCATE,
            "reopening keeps the fill"
        );
        append(&mut log, 102..=102);
        assert_eq!(log.read(102, 102).unwrap()[0].1, b"entry 102");
    }

    #[test]
    fn an_append_cut_short_inside_the_fill_ends_the_log() {
        let path = tmp("cut-short");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=5);
        let end = log.end;
        drop(log);
        // The crash let the header's sector and the sector after the next one reach the
        // disk, not the sector between them: a frame of record 6 with a zero sector.
        let mut frame = Vec::new();
        encode_frame(&mut frame, 6, &[b'y'; 3 * SECTOR as usize]);
        let first = (SECTOR - end % SECTOR) as usize;
        scribble(&path, end, &frame[..first]);
        scribble(
            &path,
            end + first as u64 + SECTOR,
            &frame[first + SECTOR as usize..],
        );
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((1, 5)));
        append(&mut log, 6..=7);
        drop(log);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((1, 7)));
        assert_eq!(log.read(6, 6).unwrap()[0].1, b"entry 6");
    }

    #[test]
    fn a_bad_frame_whose_sectors_were_all_written_is_damage() {
        let path = tmp("damage-last");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=5);
        let last = log.slots[4];
        drop(log);
        // The last record, followed by the zero fill, with one payload byte changed.
        scribble(&path, last.offset + HEADER as u64, b"E");
        let err = LogFile::open(&path).err().expect("must fail");
        assert!(
            matches!(err, LogFileError::Corrupt { offset, .. } if offset == last.offset),
            "{err}"
        );
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_not_a_silent_loss() {
        let path = tmp("corrupt");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=5);
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 2] ^= 0xff; // inside record 1's payload
        std::fs::write(&path, bytes).unwrap();
        let err = LogFile::open(&path).err().expect("must fail");
        assert!(
            matches!(err, LogFileError::Corrupt { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn truncate_and_purge_keep_indexes_consistent() {
        let path = tmp("truncate");
        let mut log = LogFile::open(&path).unwrap();
        append(&mut log, 1..=200);
        log.truncate_from(150).unwrap();
        assert_eq!(log.bounds(), Some((1, 149)));
        append(&mut log, 150..=160);
        log.purge_upto(120).unwrap(); // 120 dead > 40 live: compacts
        assert_eq!(log.bounds(), Some((121, 160)));
        assert_eq!(
            log.read(0, 121).unwrap(),
            vec![(121, b"entry 121".to_vec())]
        );
        drop(log);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((121, 160)));
        assert!(
            log.append([(170u64, b"x".as_slice())]).is_err(),
            "a gap is refused"
        );
        log.purge_upto(160).unwrap();
        assert_eq!(log.bounds(), None);
        // After a snapshot install the log restarts further on.
        append(&mut log, 500..=501);
        assert_eq!(log.bounds(), Some((500, 501)));
        drop(log);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.bounds(), Some((500, 501)));
        assert_eq!(
            log.read(501, 501).unwrap(),
            vec![(501, b"entry 501".to_vec())]
        );
    }
}
