//! The directory archive's manifest: every file CallTap copied into the archive directory, one
//! path relative to the archive root per line, in `archive-manifest.txt` in the data dir.
//!
//! Retention deletes only what it lists: the archive root is often a NAS share where other
//! applications keep their own `.wav` and `.pcap` files, and a file's name or age says nothing
//! about whose it is. A path is written (fsync'd) before its copy starts, so a crash between
//! the two leaves at worst an entry for a file that never arrived, which the next sweep drops;
//! never a CallTap file retention would not know. Removals rewrite the file (temp file, fsync,
//! rename, fsync of the directory).

use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use super::target::is_safe_rel;

/// The manifest's name in the data dir.
pub const MANIFEST_FILE: &str = "archive-manifest.txt";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("archive manifest {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A path that cannot be one line of the manifest (or escapes the archive root).
    #[error("archive manifest: refusing path {rel:?}")]
    BadPath { rel: String },
}

pub struct Manifest {
    path: PathBuf,
    /// Opened on the first addition: a recorder without a directory archive never makes one.
    file: Option<File>,
    rels: BTreeSet<String>,
}

impl Manifest {
    /// Reads the manifest at `path` (none yet: empty). A torn last line (a crash mid-append)
    /// is ignored: its copy had not started.
    pub fn open(path: &Path) -> Result<Manifest, ManifestError> {
        let err = |source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut rels = BTreeSet::new();
        let mut torn = false;
        match File::open(path) {
            Ok(f) => {
                let mut reader = BufReader::new(f);
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).map_err(err)? == 0 {
                        break;
                    }
                    let Some(rel) = line.strip_suffix('\n') else {
                        torn = true;
                        break;
                    };
                    if is_safe_rel(rel) {
                        rels.insert(rel.to_string());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut m = Manifest {
            path: path.to_path_buf(),
            file: None,
            rels,
        };
        if torn {
            // Appending after a torn line would glue the next path to it.
            m.rewrite()?;
        }
        Ok(m)
    }

    /// Records `rel` (relative to the archive root) as CallTap's, durably, before its copy.
    pub fn add(&mut self, rel: &str) -> Result<(), ManifestError> {
        if self.rels.contains(rel) {
            return Ok(());
        }
        if !is_safe_rel(rel) || rel.contains(['\n', '\r']) {
            return Err(ManifestError::BadPath { rel: rel.into() });
        }
        let err = |source| ManifestError::Io {
            path: self.path.clone(),
            source,
        };
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(err)?;
                self.file.insert(f)
            }
        };
        file.write_all(format!("{rel}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(err)?;
        self.rels.insert(rel.to_string());
        Ok(())
    }

    /// The archived paths, relative to the archive root.
    pub fn rels(&self) -> impl Iterator<Item = &str> {
        self.rels.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.rels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rels.is_empty()
    }

    /// Forgets `gone` (deleted, or never arrived) and rewrites the file without them.
    pub fn remove(&mut self, gone: &[String]) -> Result<(), ManifestError> {
        let before = self.rels.len();
        for rel in gone {
            self.rels.remove(rel);
        }
        if self.rels.len() == before {
            return Ok(());
        }
        self.rewrite()
    }

    fn rewrite(&mut self) -> Result<(), ManifestError> {
        let err = |source| ManifestError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("txt.tmp");
        let mut text = String::new();
        for rel in &self.rels {
            text.push_str(rel);
            text.push('\n');
        }
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        // The old append handle points at the replaced file.
        self.file = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additions_survive_a_reopen_and_removals_a_rewrite() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join(MANIFEST_FILE);
        let mut m = Manifest::open(&path).expect("open");
        assert!(m.is_empty() && !path.exists());
        m.add("2026/01/02/a.wav").expect("a");
        m.add("2026/01/02/a.rtp.pcap").expect("pcap");
        m.add("2026/01/02/a.wav").expect("again");
        assert!(matches!(
            m.add("../etc/x.wav"),
            Err(ManifestError::BadPath { .. })
        ));
        assert!(matches!(
            m.add("a\nb.wav"),
            Err(ManifestError::BadPath { .. })
        ));
        m.remove(&["2026/01/02/a.rtp.pcap".into()]).expect("remove");
        m.add("2026/01/03/b.wav").expect("b after the rewrite");
        // A torn last line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"2026/01/03/c.w"))
            .expect("torn");
        let m = Manifest::open(&path).expect("reopen");
        let rels: Vec<&str> = m.rels().collect();
        assert_eq!(rels, vec!["2026/01/02/a.wav", "2026/01/03/b.wav"]);
    }
}
