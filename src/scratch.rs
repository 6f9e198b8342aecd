//! Test support: a directory of its own under the temp dir, for the unit tests that write files (the config's
//! loading, the config file's watch).

/// A directory of its own under the temp dir, removed with what it holds when this is dropped.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A new, empty directory named `prefix-<uuid>`.
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}
