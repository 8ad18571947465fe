//! A JSON Lines file rotated by size. Lines are never split across files:
//! a batch is cut at line boundaries where the next line would pass
//! `max_size`. The file is reopened on SIGHUP and when its path no longer
//! names the open file (logrotate renamed or removed it).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::writer::Outcome;
use crate::config::FileSink;

/// How often the path is checked against the open file.
const RENAME_CHECK: Duration = Duration::from_secs(1);
/// How often a file that failed to open is tried again.
const RETRY_OPEN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RotatingFile {
    cfg: FileSink,
    file: Option<File>,
    /// Bytes in the open file.
    size: u64,
    /// (device, inode) of the open file.
    ident: (u64, u64),
    checked: Instant,
    failed_open: Option<Instant>,
}

fn err(path: &Path, what: &str, e: &io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl RotatingFile {
    pub fn new(cfg: FileSink) -> Self {
        Self {
            cfg,
            file: None,
            size: 0,
            ident: (0, 0),
            checked: Instant::now(),
            failed_open: None,
        }
    }

    /// SIGHUP: the next write opens the path afresh.
    pub fn reopen(&mut self) {
        self.file = None;
        self.failed_open = None;
    }

    fn open(&mut self) -> Result<(), String> {
        let path = &self.cfg.path;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| err(path, "opening", &e))?;
        let m = f.metadata().map_err(|e| err(path, "reading", &e))?;
        self.size = m.len();
        self.ident = (m.dev(), m.ino());
        self.file = Some(f);
        self.checked = Instant::now();
        Ok(())
    }

    /// Opens the file if needed; reopens it when its path was moved away.
    fn ensure_open(&mut self, now: Instant) -> Result<(), String> {
        if self.file.is_some() && now.duration_since(self.checked) >= RENAME_CHECK {
            self.checked = now;
            let same = std::fs::metadata(&self.cfg.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ident);
            if !same {
                self.file = None;
            }
        }
        if self.file.is_some() {
            return Ok(());
        }
        if self
            .failed_open
            .is_some_and(|t| now.duration_since(t) < RETRY_OPEN)
        {
            return Err(format!(
                "{} is not open (retrying every second)",
                self.cfg.path.display()
            ));
        }
        self.open().inspect_err(|_| self.failed_open = Some(now))?;
        self.failed_open = None;
        Ok(())
    }

    /// Writes whole lines (`ends`: the offset after each line in `bytes`).
    pub fn write_lines(&mut self, bytes: &[u8], ends: &[usize]) -> Outcome {
        let mut written = 0;
        let mut start = 0;
        let mut i = 0;
        while i < ends.len() {
            if let Err(e) = self.ensure_open(Instant::now()) {
                return Outcome {
                    written,
                    error: Some(e),
                };
            }
            // As many lines as fit; one line alone when even it does not.
            let room = self.cfg.max_size.saturating_sub(self.size) as usize;
            let mut j = i;
            while j < ends.len() && ends[j] - start <= room {
                j += 1;
            }
            if j == i && self.size > 0 {
                if let Err(e) = self.rotate() {
                    return Outcome {
                        written,
                        error: Some(e),
                    };
                }
                continue;
            }
            let j = j.max(i + 1);
            if let Err(e) = self.append(&bytes[start..ends[j - 1]]) {
                return Outcome {
                    written,
                    error: Some(e),
                };
            }
            written += (j - i) as u64;
            start = ends[j - 1];
            i = j;
        }
        Outcome { written, error: None }
    }

    /// Appends a run of whole lines; on failure (a full disk) cuts the file
    /// back so that no partial line is left for the next write to follow.
    fn append(&mut self, chunk: &[u8]) -> Result<(), String> {
        let path = &self.cfg.path;
        let Some(f) = self.file.as_mut() else {
            return Err(format!("{} is not open", path.display()));
        };
        match f.write_all(chunk) {
            Ok(()) => {
                self.size += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(self.size);
                Err(err(path, "writing", &e))
            }
        }
    }

    /// `path` becomes `path.1` (compressed to `path.1.gz`), older ones move
    /// up by one, and those beyond `keep` are removed.
    fn rotate(&mut self) -> Result<(), String> {
        self.file = None;
        let path = self.cfg.path.clone();
        let keep = self.cfg.keep;
        let ext = if self.cfg.compress { ".gz" } else { "" };
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}{ext}", path.display()));
        // Whatever lies beyond `keep` (left by a larger keep before).
        let mut n = keep + 1;
        while numbered(n).exists() {
            let _ = std::fs::remove_file(numbered(n));
            n += 1;
        }
        if keep == 0 {
            std::fs::remove_file(&path).map_err(|e| err(&path, "removing", &e))?;
        } else {
            let _ = std::fs::remove_file(numbered(keep));
            for n in (1..keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1)).map_err(|e| err(&from, "renaming", &e))?;
                }
            }
            if self.cfg.compress {
                compress(&path, &numbered(1))?;
            } else {
                std::fs::rename(&path, numbered(1)).map_err(|e| err(&path, "renaming", &e))?;
            }
        }
        self.open()
    }
}

/// Gzips `from` into `to` (through a temporary name, so that a reader
/// never sees half an archive), then removes `from`.
fn compress(from: &Path, to: &Path) -> Result<(), String> {
    let tmp = PathBuf::from(format!("{}.tmp", to.display()));
    let run = || -> io::Result<()> {
        let mut input = File::open(from)?;
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        io::copy(&mut input, &mut gz)?;
        gz.finish()?.sync_data()?;
        std::fs::rename(&tmp, to)?;
        std::fs::remove_file(from)
    };
    run().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(from, "compressing", &e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize, width: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            // {"n":"0…0i"} and a newline: `width` bytes.
            let line = format!("{{\"n\":\"{i:0w$}\"}}\n", w = width - 9);
            bytes.extend_from_slice(line.as_bytes());
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("connectracer-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotates_at_size_keeps_n_and_never_splits_a_line() {
        let d = dir("rotate");
        let path = d.join("events.jsonl");
        let mut f = RotatingFile::new(FileSink {
            path: path.clone(),
            max_size: 4096,
            keep: 2,
            compress: false,
        });
        // 100-byte lines: 40 fit in 4096 bytes.
        let (bytes, ends) = lines(200, 100);
        let o = f.write_lines(&bytes, &ends);
        assert_eq!((o.written, o.error), (200, None));
        let mut total = 0;
        for p in [path.clone(), d.join("events.jsonl.1"), d.join("events.jsonl.2")] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 4096, "{}", p.display());
            assert!(text.ends_with('\n'));
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
            total += text.lines().count();
        }
        assert_eq!(total, 40 + 40 + 40, "the newest three files of five");
        assert!(!d.join("events.jsonl.3").exists(), "keep = 2");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compressed_rotations_are_gzip() {
        let d = dir("gzip");
        let path = d.join("events.jsonl");
        let mut f = RotatingFile::new(FileSink {
            path: path.clone(),
            max_size: 4096,
            keep: 1,
            compress: true,
        });
        let (bytes, ends) = lines(60, 100);
        assert_eq!(f.write_lines(&bytes, &ends).written, 60);
        let gz = std::fs::read(d.join("events.jsonl.1.gz")).unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
        assert_eq!(text.lines().count(), 40);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 20);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unopenable_path_is_an_error_naming_it() {
        let mut f = RotatingFile::new(FileSink {
            path: PathBuf::from("/proc/connectracer-nonexistent/events.jsonl"),
            max_size: 4096,
            keep: 1,
            compress: false,
        });
        let (bytes, ends) = lines(3, 100);
        let o = f.write_lines(&bytes, &ends);
        assert_eq!(o.written, 0);
        assert!(
            o.error
                .as_deref()
                .unwrap()
                .contains("/proc/connectracer-nonexistent/events.jsonl"),
            "{o:?}",
            o = o.error
        );
    }
}
