//! A Markdown report that is printed and saved line by line, so a GPU run stopped at its time
//! limit still leaves everything it measured up to that point (device time is scarce; a rerun
//! to recover a lost table is the costliest way to get it).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Text written with `write!`/`writeln!`; every completed line goes to stdout at once and the
/// whole text is rewritten to the file.
pub struct Report {
    path: PathBuf,
    text: String,
    printed: usize,
}

impl Report {
    /// An empty report that will live at `path` (its folder is created).
    pub fn create(path: &Path) -> std::io::Result<Report> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, "")?;
        Ok(Report {
            path: path.to_path_buf(),
            text: String::new(),
            printed: 0,
        })
    }

    /// Where the report is saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flush_lines(&mut self) -> std::io::Result<()> {
        let Some(end) = self.text.rfind('\n') else {
            return Ok(());
        };
        if end + 1 <= self.printed {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&self.text.as_bytes()[self.printed..=end])?;
        stdout.flush()?;
        self.printed = end + 1;
        std::fs::write(&self.path, &self.text)
    }
}

impl fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.push_str(s);
        if s.contains('\n') {
            self.flush_lines().map_err(|_| fmt::Error)?;
        }
        Ok(())
    }
}
