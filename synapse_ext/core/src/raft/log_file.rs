//! A durable, append-only file of numbered records: the storage under the Raft log.
//!
//! Layout: one file of frames `[index u64][len u32][crc32 u32][payload]`, little endian,
//! indexes strictly increasing by one. Appends are written and `fsync`ed before
//! [`LogFile::append`] returns, so an acknowledged record survives a crash. On open, a torn
//! or corrupt tail (a crash in the middle of a write) is cut off at the last good frame;
//! a bad frame in the middle means the file is damaged and is reported, never skipped.
//!
//! Purging the head (after a snapshot) only moves a logical start; the file is rewritten
//! without the purged frames once they are the larger part of it, through a temporary file
//! renamed over the old one, so a crash leaves either the old or the new file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8 + 4 + 4;

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
        let mut header = [0u8; HEADER];
        let mut payload = Vec::new();
        while offset + HEADER as u64 <= len {
            reader.read_exact(&mut header).map_err(io_err(&path))?;
            let index = u64::from_le_bytes(header[0..8].try_into().unwrap());
            let rec_len = u32::from_le_bytes(header[8..12].try_into().unwrap());
            let crc = u32::from_le_bytes(header[12..16].try_into().unwrap());
            let frame_end = offset + HEADER as u64 + rec_len as u64;
            if frame_end > len {
                break; // torn tail: the write of this frame did not finish
            }
            payload.resize(rec_len as usize, 0);
            reader.read_exact(&mut payload).map_err(io_err(&path))?;
            if crc32fast::hash(&payload) != crc {
                if frame_end == len {
                    break; // torn tail: the last frame's payload is incomplete garbage
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
        drop(reader);
        if offset < len {
            file.set_len(offset).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        Ok(LogFile {
            path,
            file,
            slots,
            dead_frames: 0,
            end: offset,
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
        self.file.write_all(&buf).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
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
        self.file.set_len(cut).map_err(io_err(&self.path))?;
        self.file.sync_all().map_err(io_err(&self.path))?;
        self.end = cut;
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
