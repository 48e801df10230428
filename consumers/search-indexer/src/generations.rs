//! The index folder holds generations of the index: `gen-<n>/`, each a whole tantivy index
//! with its own offsets, and `CURRENT`, the name of the one the service serves.
//!
//! `herald search-indexer reindex` builds generation n + 1 beside the live one and, once it
//! has caught up with the log, names it in `CURRENT` (written to a temporary file and renamed
//! over, so a reader finds the old name or the new one, never a torn one). The service
//! notices, switches its queries and its consumer to the new generation and removes the old
//! one. Queries never see an empty or half-built index.

use std::io::Write;
use std::path::{Path, PathBuf};

const CURRENT: &str = "CURRENT";
const PREFIX: &str = "gen-";

#[derive(Debug, thiserror::Error)]
#[error("search index folder {path}: {action}: {source}")]
pub struct GenerationError {
    path: PathBuf,
    action: &'static str,
    source: std::io::Error,
}

/// The generations in one index folder.
#[derive(Debug, Clone)]
pub struct Generations {
    dir: PathBuf,
}

impl Generations {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{generation}"))
    }

    /// The generation `CURRENT` names; `None` before the first one.
    pub fn current(&self) -> Result<Option<u64>, GenerationError> {
        let path = self.dir.join(CURRENT);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse(text.trim())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(GenerationError {
                path,
                action: "reading",
                source,
            }),
        }
    }

    /// The generation to serve: the current one, or a first one (named current now).
    pub fn live(&self) -> Result<u64, GenerationError> {
        match self.current()? {
            Some(generation) => Ok(generation),
            None => {
                self.promote(1)?;
                Ok(1)
            }
        }
    }

    /// A new, empty generation after every existing one.
    pub fn fresh(&self) -> Result<u64, GenerationError> {
        let next = self.existing()?.into_iter().max().unwrap_or(0) + 1;
        let path = self.path(next);
        std::fs::create_dir_all(&path).map_err(|source| GenerationError {
            path,
            action: "creating",
            source,
        })?;
        Ok(next)
    }

    /// Names `generation` in `CURRENT`, atomically and durably.
    pub fn promote(&self, generation: u64) -> Result<(), GenerationError> {
        let fail = |path: &Path, action| {
            let path = path.to_path_buf();
            move |source| GenerationError {
                path,
                action,
                source,
            }
        };
        std::fs::create_dir_all(&self.dir).map_err(fail(&self.dir, "creating"))?;
        let temporary = self.dir.join(format!("{CURRENT}.tmp"));
        let mut file = std::fs::File::create(&temporary).map_err(fail(&temporary, "creating"))?;
        file.write_all(format!("{PREFIX}{generation}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(fail(&temporary, "writing"))?;
        let current = self.dir.join(CURRENT);
        std::fs::rename(&temporary, &current).map_err(fail(&current, "replacing"))?;
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(fail(&self.dir, "syncing"))
    }

    /// Removes every generation older than `generation` (a newer one may be being built).
    pub fn remove_older_than(&self, generation: u64) {
        for old in self.existing().unwrap_or_default() {
            if old < generation {
                let path = self.path(old);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(dir = %path.display(), "removed an old search index generation");
                    }
                    Err(err) => {
                        tracing::warn!(dir = %path.display(), %err, "cannot remove an old search index generation");
                    }
                }
            }
        }
    }

    /// Removes one generation (a rebuild that did not finish).
    pub fn remove(&self, generation: u64) -> Result<(), GenerationError> {
        let path = self.path(generation);
        std::fs::remove_dir_all(&path).map_err(|source| GenerationError {
            path,
            action: "removing",
            source,
        })
    }

    fn existing(&self) -> Result<Vec<u64>, GenerationError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(GenerationError {
                    path: self.dir.clone(),
                    action: "listing",
                    source,
                });
            }
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_dir())
            .filter_map(|entry| parse(&entry.file_name().to_string_lossy()))
            .collect())
    }
}

fn parse(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_numbered_and_current_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("herald-gen-{}", uuid::Uuid::new_v4()));
        let generations = Generations::new(&dir);
        assert_eq!(generations.current().unwrap(), None);
        assert_eq!(generations.live().unwrap(), 1);
        std::fs::create_dir_all(generations.path(1)).unwrap();
        assert_eq!(generations.current().unwrap(), Some(1));
        let next = generations.fresh().unwrap();
        assert_eq!(next, 2);
        assert!(generations.path(2).is_dir());
        // Built but not promoted: the service still serves 1.
        assert_eq!(generations.live().unwrap(), 1);
        generations.promote(next).unwrap();
        assert_eq!(generations.current().unwrap(), Some(2));
        assert!(!dir.join("CURRENT.tmp").exists());
        generations.remove_older_than(2);
        assert!(!generations.path(1).exists());
        assert!(generations.path(2).is_dir());
        assert_eq!(generations.fresh().unwrap(), 3);
        generations.remove(3).unwrap();
        assert!(!generations.path(3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
