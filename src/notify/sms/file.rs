//! The offline gateway: appends each message as one JSON line
//! (`{"time_ms":..,"to":..,"from":..,"body":..}`) to a file, so stepgate can be tried without an
//! SMS provider and the codes read from the file. The file is created readable by its owner only
//! (0600); its folder must exist. Writes run on the blocking pool, one at a time, and open the
//! file each time, so moving it away (rotation) simply starts a new one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;

use super::super::NotifyError;
use crate::config::settings::FileGatewaySettings;
use crate::domain::ports::{SendError, SmsMessage, SmsSender};

/// One line of the outbox.
#[derive(Debug, Serialize)]
struct OutboxLine<'a> {
    time_ms: u128,
    to: &'a str,
    from: Option<&'a str>,
    body: &'a str,
}

/// Appends messages to one file.
#[derive(Debug, Clone)]
pub struct FileSender {
    path: PathBuf,
    /// Serializes appends, so lines never interleave.
    append_lock: Arc<Mutex<()>>,
}

fn open_for_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

impl FileSender {
    pub fn new(settings: &FileGatewaySettings) -> Self {
        Self {
            path: settings.path.clone(),
            append_lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating) the file for appending; warns when an existing file is readable by others.
    pub async fn check_writable(&self) -> Result<(), NotifyError> {
        let sender = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let file = open_for_append(&sender.path)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = file.metadata()?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %sender.path.display(), mode = format!("{:o}", mode & 0o777), "the SMS outbox holds codes but is readable by others (expected mode 600)");
                }
            }
            Ok(())
        })
        .await;
        match outcome {
            Ok(result) => result.map_err(|source| NotifyError::Outbox {
                path: self.path.clone(),
                source,
            }),
            Err(join_error) => Err(NotifyError::Outbox {
                path: self.path.clone(),
                source: std::io::Error::other(join_error.to_string()),
            }),
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let _one_at_a_time = self
            .append_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut file = open_for_append(&self.path)?;
        file.write_all(line)?;
        file.flush()
    }
}

#[async_trait]
impl SmsSender for FileSender {
    fn gateway(&self) -> &'static str {
        "file"
    }

    async fn send(&self, message: &SmsMessage) -> Result<(), SendError> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis());
        let line = OutboxLine {
            time_ms,
            to: &message.to,
            from: message.from.as_deref(),
            body: &message.body,
        };
        let mut bytes = serde_json::to_vec(&line)
            .map_err(|error| SendError::Rejected(format!("cannot encode the message: {error}")))?;
        bytes.push(b'\n');
        let sender = self.clone();
        let path = self.path.display().to_string();
        match tokio::task::spawn_blocking(move || sender.append(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SendError::Unavailable(format!(
                "cannot append to the SMS outbox {path}: {error}"
            ))),
            Err(join_error) => Err(SendError::Unavailable(format!(
                "writing the SMS outbox {path} failed: {join_error}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_appended_and_a_moved_file_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let sender = FileSender::new(&FileGatewaySettings { path: path.clone() });
        sender.check_writable().await.unwrap();
        let message = SmsMessage {
            to: "+31612345678".into(),
            from: Some("MyBank".into()),
            body: "Code: 123456\n\n@bank.example #123456".into(),
        };
        sender.send(&message).await.unwrap();
        std::fs::rename(&path, dir.path().join("outbox.jsonl.1")).unwrap();
        sender
            .send(&SmsMessage {
                from: None,
                ..message
            })
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["to"], "+31612345678");
        assert!(line["from"].is_null());
        assert_eq!(line["body"], "Code: 123456\n\n@bank.example #123456");
        assert!(line["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[tokio::test]
    async fn a_missing_folder_fails_the_startup_check() {
        let dir = tempfile::tempdir().unwrap();
        let sender = FileSender::new(&FileGatewaySettings {
            path: dir.path().join("absent/outbox.jsonl"),
        });
        let error = sender.check_writable().await.unwrap_err();
        assert!(error.to_string().contains("absent/outbox.jsonl"), "{error}");
    }
}
