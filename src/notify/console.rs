//! What the `console` SMS gateway and push provider share: each message as one printable line
//! on standard output (or, in tests, any writer), written off the async workers since standard
//! output may be a slow pipe.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// Where console lines go.
#[derive(Clone)]
pub struct ConsoleOutput {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput").finish_non_exhaustive()
    }
}

impl ConsoleOutput {
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Writes `line` and a newline; the error says why it could not.
    pub async fn print(&self, mut line: String) -> Result<(), String> {
        line.push('\n');
        let output = self.clone();
        match tokio::task::spawn_blocking(move || output.write(&line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("cannot print to standard output: {error}")),
            Err(join_error) => Err(format!("printing failed: {join_error}")),
        }
    }

    fn write(&self, line: &str) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

/// `text` as one printable line for a console: line breaks become ` / ` (empty lines dropped)
/// and other control characters are escaped, so it cannot drive the terminal.
pub fn printable_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for (i, part) in text
        .split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .enumerate()
    {
        if i > 0 {
            line.push_str(" / ");
        }
        for c in part.chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
    }
    line
}

/// A writer whose bytes a test reads back.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    pub fn output(&self) -> ConsoleOutput {
        ConsoleOutput::to_writer(Box::new(self.clone()))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
