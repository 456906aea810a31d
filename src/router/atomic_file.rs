//! Replacing a configuration file that a load balancer includes or watches: the new text goes to
//! a temporary file in the same directory (same file system), is flushed to disk, takes the old
//! file's permissions, and is renamed over it. A reader sees the old file or the new one, never
//! a partial one, and a watcher of the directory sees one move.

use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// The temporary file next to `path`: hidden, and not ending like the original, so globs such
/// as nginx's `include conf.d/*.conf` and watchers filtering on extensions ignore it.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.canaryd-tmp"))
}

/// Replaces `path` with `contents` atomically.
pub async fn replace(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = temporary(path);
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(contents.as_bytes()).await?;
        file.sync_all().await?;
        drop(file);
        if let Ok(old) = tokio::fs::metadata(path).await {
            tokio::fs::set_permissions(&tmp, old.permissions()).await?;
        }
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Reads `path` as text.
pub async fn read(path: &Path) -> std::io::Result<String> {
    tokio::fs::read_to_string(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_in_place_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upstreams.conf");
        replace(&path, "one").await.unwrap();
        replace(&path, "two").await.unwrap();
        assert_eq!(read(&path).await.unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("upstreams.conf")]);
        assert!(
            replace(&dir.path().join("missing/x.conf"), "x")
                .await
                .is_err()
        );
    }
}
