//! One module per subcommand; each parses nothing itself and only calls the library crates.
//!
//! Subcommands print through [`outln!`] and [`out!`], never `println!`: a closed pipe
//! (`seqpipe plan | head -1`) or a full disk (`> /dev/full`) is then an error that `main` reports,
//! not a panic.

/// `println!` that returns the write error from the enclosing function, as an `io::Error` of the
/// same kind (so it converts into `anyhow` in a command and into the library's error in a
/// training callback).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| {
            std::io::Error::new(e.kind(), format!("writing to standard output: {e}"))
        })?
    }};
}

/// `print!` that returns the write error from the enclosing function (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*)
            .and_then(|()| stdout.flush())
            .map_err(|e| std::io::Error::new(e.kind(), format!("writing to standard output: {e}")))?
    }};
}

pub mod data_args;
pub mod eval;
pub mod export;
pub mod gpu_file;
pub mod model;
pub mod plan;
pub mod plan_elastic;
pub mod plan_emit;
pub mod plan_rank;
pub mod schedule;
pub mod simulate;
pub mod slice;
pub mod train;
