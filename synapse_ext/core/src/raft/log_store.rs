//! openraft's log storage on disk: the entries in a [`LogFile`], the vote and the last
//! purged log id in small files, all under one directory (`$PGDATA/synapse/raft/log`).
//!
//! Durability: an entry, a vote or a purge is fsync'd before openraft is told it is done.
//! Small state files are replaced atomically (write a temporary file, fsync, rename, fsync
//! the directory), so a crash leaves the old or the new value, never a mix.

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::log_file::{LogFile, LogFileError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG: &str = "log";
const VOTE: &str = "vote.json";
const PURGED: &str = "purged.json";

struct Inner {
    dir: PathBuf,
    log: LogFile,
    /// Id of the last entry in the log, or the last purged one when the log is empty.
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// The Raft log of one node. Clones share the same files (openraft reads through clones
/// while it appends through the original).
#[derive(Clone)]
pub struct FileLogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_error(e: LogFileError) -> io::Error {
    match e {
        LogFileError::Io { source, .. } => source,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `value` atomically and durably.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

impl FileLogStore {
    /// Opens the log in `dir`, creating the directory when needed.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<FileLogStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut log = LogFile::open(dir.join(LOG)).map_err(io_error)?;
        let last_purged: Option<LogId> = read_json(&dir.join(PURGED))?;
        if let Some(purged) = last_purged {
            log.purge_upto(purged.index).map_err(io_error)?;
        }
        let last_log_id = match log.bounds() {
            Some((_, last)) => {
                let (_, bytes) = log
                    .read(last, last)
                    .map_err(io_error)?
                    .pop()
                    .expect("last entry");
                let entry: Entry = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        let vote = read_json(&dir.join(VOTE))?;
        let committed = None;
        Ok(FileLogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir,
                log,
                last_log_id,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    /// The last committed log index this node has learned of.
    pub fn committed_index(&self) -> Option<u64> {
        self.lock().committed.map(|c| c.index)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (from <= to).then_some((from, to))
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((from, to)) = bounds(&range) else {
            return Ok(vec![]);
        };
        let mut inner = self.lock();
        let records = inner
            .log
            .read(from, to)
            .map_err(|e| StorageIOError::read_logs(&io_error(e)))?;
        records
            .into_iter()
            .map(|(_, bytes)| {
                serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = FileLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.lock();
        write_json_atomic(&inner.dir.join(VOTE), vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory only, for status reports: durability is not needed for safety
        // (a restarted node learns the commit index from the leader) and an fsync per
        // commit would halve write throughput.
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(None)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut last = None;
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            encoded.push((entry.log_id.index, bytes));
            last = Some(entry.log_id);
        }
        let mut inner = self.lock();
        let result = inner
            .log
            .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())));
        match result {
            Ok(()) => {
                if last.is_some() {
                    inner.last_log_id = last;
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let e = io_error(e);
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner
            .log
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&io_error(e)))?;
        inner.last_log_id = match inner.log.bounds() {
            Some((_, last)) => {
                let (_, bytes) = inner
                    .log
                    .read(last, last)
                    .map_err(|e| StorageIOError::read_logs(&io_error(e)))?
                    .pop()
                    .expect("last entry");
                let entry: Entry =
                    serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
            None => inner.last_purged,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        // Record the purge first: a crash between the two steps re-purges on open.
        write_json_atomic(&inner.dir.join(PURGED), &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.last_purged = Some(log_id);
        inner
            .log
            .purge_upto(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&io_error(e)))?;
        if inner.log.bounds().is_none() {
            inner.last_log_id = Some(log_id);
        }
        Ok(())
    }
}
