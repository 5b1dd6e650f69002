//! One module per subcommand; each parses nothing itself and only calls the library crates.
//!
//! Subcommands print through [`outln!`] and [`out!`], never `println!`: a closed pipe
//! (`seqpipe plan | head -1`) or a full disk (`> /dev/full`) is then an error that `main` reports,
//! not a panic.

/// `println!` that returns the write error (as `anyhow`) from the enclosing function.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| {
            anyhow::Error::new(e).context("writing to standard output")
        })?
    }};
}

/// `print!` that returns the write error (as `anyhow`) from the enclosing function.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*)
            .and_then(|()| stdout.flush())
            .map_err(|e| anyhow::Error::new(e).context("writing to standard output"))?
    }};
}

pub mod model;
pub mod plan;
pub mod plan_elastic;
pub mod schedule;
pub mod simulate;
pub mod slice;
pub mod train;
