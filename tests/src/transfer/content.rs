//! What is sent: files of pseudo-random bytes in a directory that removes
//! itself, and their SHA-256 (by `sha256sum`, as a user would check).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A directory under `/run/portmap-tests`, removed with its content on drop.
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = PathBuf::from(format!(
            "/run/portmap-tests/xfer-{}",
            crate::unique_name(tag)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created if missing.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A file of known content.
#[derive(Clone, Debug)]
pub struct Blob {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl Blob {
    /// Writes `size` pseudo-random bytes (a function of `seed`) to `path`.
    pub fn write(path: PathBuf, size: usize, seed: u64) -> Result<Self> {
        std::fs::write(&path, pseudo_random(size, seed))
            .with_context(|| format!("writing {}", path.display()))?;
        let sha256 = sha256_file(&path)?;
        Ok(Blob {
            path,
            size: size as u64,
            sha256,
        })
    }

    /// The file's name, as served from the document root.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }
}

/// Bytes no compression or pattern can shortcut (xorshift64*), so a
/// misplaced or repeated segment changes the hash.
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// `sha256sum FILE`: the hex digest.
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!(
            "sha256sum {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    digest_of(&out.stdout)
}

/// The digest `sha256sum` printed (`HEX  NAME`).
pub fn digest_of(output: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(output);
    match text.split_whitespace().next() {
        Some(hex) if hex.len() == 64 => Ok(hex.to_string()),
        _ => bail!("sha256sum printed {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_seeded() {
        assert_eq!(pseudo_random(100, 1), pseudo_random(100, 1));
        assert_ne!(pseudo_random(100, 1), pseudo_random(100, 2));
        assert_eq!(pseudo_random(13, 5).len(), 13);
    }
}
