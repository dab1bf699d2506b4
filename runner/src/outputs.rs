//! Kept outputs of finished tasks, so a later task on this runner can read one with
//! `params.input = {"task_id": …}` instead of a dataset: fetch → filter → model → export chain
//! without the data leaving the machine.
//!
//! An output is either a **table file** (`<dir>/<task_id>.parquet`, or the `.csv` an operation
//! wrote) or a **view** (what a fetch returns: some columns of another source, no file of its
//! own), described by `<dir>/<task_id>.json`. The store survives runner restarts (it lives in the
//! runner's state directory), is bounded in bytes and evicts the oldest outputs first. Kept
//! files are written to a temporary name and renamed, so a crash never leaves a half-written
//! output that a later task would read. This module does not run operations, resolve datasets
//! (that is [`crate::catalog`]) or talk to the server.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dap_protocol::DatasetFormat;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::operations::params::SourceRef;

/// Default byte budget for kept outputs (`--keep-outputs-bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// What an operation offers to keep as its output table.
pub enum OutputTable {
    /// A table in memory; kept as Parquet (types survive, unlike CSV).
    Frame(DataFrame),
    /// A file the operation wrote into its scratch directory; moved into the store.
    File {
        path: PathBuf,
        format: DatasetFormat,
    },
    /// Columns of another source, read again when used (a fetch's output).
    View {
        source: SourceRef,
        columns: Option<Vec<String>>,
    },
}

impl std::fmt::Debug for OutputTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputTable::Frame(df) => {
                write!(f, "OutputTable::Frame({}x{})", df.height(), df.width())
            }
            OutputTable::File { format, .. } => write!(f, "OutputTable::File({format:?})"),
            OutputTable::View { source, columns } => {
                write!(f, "OutputTable::View({source:?}, {columns:?})")
            }
        }
    }
}

/// A kept output, as [`OutputStore::get`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    File {
        path: PathBuf,
        format: DatasetFormat,
    },
    View {
        source: SourceRef,
        columns: Option<Vec<String>>,
    },
}

/// The `<task_id>.json` descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Meta {
    File {
        file: String,
        format: DatasetFormat,
        bytes: u64,
    },
    View {
        source: SourceRef,
        columns: Option<Vec<String>>,
    },
}

impl Meta {
    fn bytes(&self) -> u64 {
        match self {
            Meta::File { bytes, .. } => *bytes,
            Meta::View { .. } => 0,
        }
    }
}

struct Entry {
    meta: Meta,
    /// Order of keeping (loaded entries get their file time order); smallest is evicted first.
    seq: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    bytes: u64,
    next_seq: u64,
}

/// The kept outputs of this runner. Cheap to share behind an `Arc`; all methods are blocking
/// file-system work (call them off the async workers).
pub struct OutputStore {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStore")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// True for the ids the store accepts as file names (server task ids are UUIDs).
pub fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl OutputStore {
    /// Open (creating) the store in `dir` and load what an earlier run kept. Descriptors that
    /// cannot be read and files without a descriptor (a crash mid-keep) are removed.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut found: Vec<(std::time::SystemTime, String, Meta)> = Vec::new();
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match name.strip_suffix(".json") {
                Some(id) if valid_task_id(id) => {
                    let meta = fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                    let file_ok = match &meta {
                        Some(Meta::File { file, .. }) => dir.join(file).is_file(),
                        Some(Meta::View { .. }) => true,
                        None => false,
                    };
                    match meta {
                        Some(meta) if file_ok => {
                            let time = fs::metadata(&path)
                                .and_then(|m| m.modified())
                                .unwrap_or(std::time::UNIX_EPOCH);
                            found.push((time, id.to_owned(), meta));
                        }
                        _ => {
                            tracing::warn!(task_id = id, "dropping an unreadable kept output");
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                _ => files.push(path),
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut index = Index::default();
        for (_, id, meta) in found {
            index.bytes += meta.bytes();
            let seq = index.next_seq;
            index.next_seq += 1;
            index.entries.insert(id, Entry { meta, seq });
        }
        // Table files nobody describes: left by a crash between writing and describing.
        let described: Vec<String> = index
            .entries
            .values()
            .filter_map(|e| match &e.meta {
                Meta::File { file, .. } => Some(file.clone()),
                Meta::View { .. } => None,
            })
            .collect();
        for path in files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !described.iter().any(|d| d == name) {
                let _ = fs::remove_file(&path);
            }
        }
        let store = Self {
            dir,
            max_bytes,
            index: Mutex::new(index),
        };
        store.evict(None);
        Ok(store)
    }

    /// Where the store lives (for redacting it from messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep `table` as the output of `task_id`, replacing an earlier one of the same task (a
    /// later attempt). A table larger than the whole budget is not kept. Blocking.
    pub fn keep(&self, task_id: &str, table: OutputTable) -> io::Result<()> {
        if !valid_task_id(task_id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a task id"));
        }
        if self.max_bytes == 0 {
            return Ok(());
        }
        let meta = match table {
            OutputTable::View { source, columns } => Meta::View { source, columns },
            OutputTable::Frame(mut df) => {
                let file = format!("{task_id}.parquet");
                let tmp = self.dir.join(format!(".{task_id}.parquet.tmp"));
                let written = (|| -> io::Result<u64> {
                    let f = fs::File::create(&tmp)?;
                    ParquetWriter::new(&f)
                        .finish(&mut df)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    f.sync_all()?;
                    Ok(f.metadata()?.len())
                })();
                let bytes = match written {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                fs::rename(&tmp, self.dir.join(&file))?;
                Meta::File {
                    file,
                    format: DatasetFormat::Parquet,
                    bytes,
                }
            }
            OutputTable::File { path, format } => {
                let ext = crate::format_name(format);
                let file = format!("{task_id}.{ext}");
                let dest = self.dir.join(&file);
                // The scratch directory may be on another file system: copy then, via a
                // temporary name so the destination is complete or absent.
                if fs::rename(&path, &dest).is_err() {
                    let tmp = self.dir.join(format!(".{task_id}.{ext}.tmp"));
                    fs::copy(&path, &tmp)?;
                    fs::rename(&tmp, &dest)?;
                }
                Meta::File {
                    file,
                    format,
                    bytes: fs::metadata(&dest)?.len(),
                }
            }
        };
        if meta.bytes() > self.max_bytes {
            if let Meta::File { file, .. } = &meta {
                let _ = fs::remove_file(self.dir.join(file));
            }
            tracing::info!(
                task_id,
                bytes = meta.bytes(),
                "output larger than --keep-outputs-bytes; not kept"
            );
            return Ok(());
        }
        let desc = self.dir.join(format!("{task_id}.json"));
        let tmp = self.dir.join(format!(".{task_id}.json.tmp"));
        fs::write(&tmp, serde_json::to_vec(&meta).map_err(io::Error::other)?)?;
        fs::rename(&tmp, &desc)?;

        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = index.entries.remove(task_id) {
            index.bytes -= old.meta.bytes();
            if let (Meta::File { file: old_file, .. }, Meta::File { file, .. }) = (&old.meta, &meta)
            {
                if old_file != file {
                    let _ = fs::remove_file(self.dir.join(old_file));
                }
            }
        }
        index.bytes += meta.bytes();
        let seq = index.next_seq;
        index.next_seq += 1;
        index
            .entries
            .insert(task_id.to_owned(), Entry { meta, seq });
        drop(index);
        self.evict(Some(task_id));
        Ok(())
    }

    /// The kept output of `task_id`, if this runner still has it.
    pub fn get(&self, task_id: &str) -> Option<Kept> {
        if !valid_task_id(task_id) {
            return None;
        }
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let kept = index.entries.get(task_id).map(|e| match &e.meta {
            Meta::File { file, format, .. } => Kept::File {
                path: self.dir.join(file),
                format: *format,
            },
            Meta::View { source, columns } => Kept::View {
                source: source.clone(),
                columns: columns.clone(),
            },
        });
        // Someone removed the file behind our back: forget it rather than fail in the reader.
        if let Some(Kept::File { path, .. }) = &kept {
            if !path.is_file() {
                if let Some(e) = index.entries.remove(task_id) {
                    index.bytes -= e.meta.bytes();
                }
                let _ = fs::remove_file(self.dir.join(format!("{task_id}.json")));
                return None;
            }
        }
        kept
    }

    /// Total bytes of kept table files.
    pub fn bytes(&self) -> u64 {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// How many outputs are kept.
    pub fn len(&self) -> usize {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove the oldest outputs (never `keep`) until the files fit the budget.
    fn evict(&self, keep: Option<&str>) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        while index.bytes > self.max_bytes {
            let victim = index
                .entries
                .iter()
                .filter(|(id, e)| Some(id.as_str()) != keep && e.meta.bytes() > 0)
                .min_by_key(|(_, e)| e.seq)
                .map(|(id, _)| id.clone());
            let Some(id) = victim else { break };
            if let Some(e) = index.entries.remove(&id) {
                index.bytes -= e.meta.bytes();
                let _ = fs::remove_file(self.dir.join(format!("{id}.json")));
                if let Meta::File { file, .. } = &e.meta {
                    let _ = fs::remove_file(self.dir.join(file));
                }
                tracing::info!(task_id = %id, "evicted a kept output to stay within --keep-outputs-bytes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn frame(n: i64) -> DataFrame {
        df!("id" => (0..n).collect::<Vec<i64>>(), "name" => (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>()).unwrap()
    }

    fn read(k: &Kept) -> DataFrame {
        match k {
            Kept::File { path, format } => {
                crate::catalog::scan_file(path, *format, Default::default())
                    .unwrap()
                    .collect()
                    .unwrap()
            }
            Kept::View { .. } => panic!("a view"),
        }
    }

    #[test]
    fn keeps_frames_as_parquet_and_survives_a_reopen() {
        let dir = TempDir::new();
        let store = OutputStore::open(dir.path().join("out"), DEFAULT_MAX_BYTES).unwrap();
        let id = "0192f0e2-aaaa-7bbb-8ccc-0123456789ab";
        store.keep(id, OutputTable::Frame(frame(5))).unwrap();
        store
            .keep(
                "v1",
                OutputTable::View {
                    source: SourceRef::Dataset("sales".into()),
                    columns: Some(vec!["a".into()]),
                },
            )
            .unwrap();
        let got = read(&store.get(id).unwrap());
        assert!(got.equals(&frame(5)), "{got}");
        assert!(store.bytes() > 0);
        drop(store);

        let store = OutputStore::open(dir.path().join("out"), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(store.len(), 2);
        assert!(read(&store.get(id).unwrap()).equals(&frame(5)));
        assert_eq!(
            store.get("v1"),
            Some(Kept::View {
                source: SourceRef::Dataset("sales".into()),
                columns: Some(vec!["a".into()])
            })
        );
        assert_eq!(store.get("nope"), None);
        assert_eq!(store.get("../etc/passwd"), None);
    }

    #[test]
    fn moves_files_and_replaces_an_earlier_attempt() {
        let dir = TempDir::new();
        let store = OutputStore::open(dir.path().join("out"), DEFAULT_MAX_BYTES).unwrap();
        let csv = dir.write("p.csv", "a,b\n1,x\n2,y\n");
        store
            .keep(
                "t1",
                OutputTable::File {
                    path: csv.clone(),
                    format: DatasetFormat::Csv,
                },
            )
            .unwrap();
        assert!(!csv.exists(), "moved, not copied");
        assert_eq!(read(&store.get("t1").unwrap()).height(), 2);
        store.keep("t1", OutputTable::Frame(frame(3))).unwrap();
        assert_eq!(read(&store.get("t1").unwrap()).height(), 3);
        assert_eq!(store.len(), 1);
        assert!(!dir.path().join("out/t1.csv").exists(), "old file removed");
    }

    #[test]
    fn evicts_the_oldest_outputs_beyond_the_budget() {
        let dir = TempDir::new();
        let probe = OutputStore::open(dir.path().join("probe"), DEFAULT_MAX_BYTES).unwrap();
        probe.keep("p", OutputTable::Frame(frame(1000))).unwrap();
        let one = probe.bytes();
        // Room for two outputs of this size, not three.
        let store = OutputStore::open(dir.path().join("out"), one * 2 + one / 2).unwrap();
        for id in ["a", "b", "c"] {
            store.keep(id, OutputTable::Frame(frame(1000))).unwrap();
        }
        assert_eq!(store.get("a"), None, "oldest evicted");
        assert!(store.get("b").is_some() && store.get("c").is_some());
        assert!(!dir.path().join("out/a.parquet").exists());
        assert!(!dir.path().join("out/a.json").exists());

        // Larger than the whole budget: not kept at all.
        let tiny = OutputStore::open(dir.path().join("tiny"), one / 2).unwrap();
        tiny.keep("big", OutputTable::Frame(frame(1000))).unwrap();
        assert_eq!(tiny.get("big"), None);
        assert_eq!(tiny.bytes(), 0);

        // Budget 0 keeps nothing.
        let off = OutputStore::open(dir.path().join("off"), 0).unwrap();
        off.keep("x", OutputTable::Frame(frame(3))).unwrap();
        assert!(off.is_empty());
    }

    #[test]
    fn a_crash_mid_keep_leaves_nothing_readable_behind() {
        let dir = TempDir::new();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join(".t9.parquet.tmp"), b"half").unwrap();
        fs::write(out.join("t8.parquet"), b"orphan").unwrap();
        fs::write(out.join("t7.json"), b"{not json").unwrap();
        let store = OutputStore::open(&out, DEFAULT_MAX_BYTES).unwrap();
        assert!(store.is_empty());
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "debris removed");
    }
}
