//! Token counts written the way long-context papers write them: `65536`, `64k`, `512K`, `2M`.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::parse_token_count;
//! assert_eq!(parse_token_count("65536").unwrap(), 65536);
//! assert_eq!(parse_token_count("64k").unwrap(), 65536);
//! assert_eq!(parse_token_count("2M").unwrap(), 2 * 1024 * 1024);
//! assert!(parse_token_count("0").is_err());
//! ```

use crate::error::{Result, SlicingError};

/// Parses a positive token count; `k`/`K` multiplies by 1024, `m`/`M` by 1024².
pub fn parse_token_count(text: &str) -> Result<u64> {
    let bad = || SlicingError::BadTokenCount {
        text: text.to_string(),
    };
    let trimmed = text.trim();
    let (digits, scale) = match trimmed.char_indices().last() {
        Some((i, 'k' | 'K')) => (&trimmed[..i], 1024),
        Some((i, 'm' | 'M')) => (&trimmed[..i], 1024 * 1024),
        _ => (trimmed, 1),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let tokens = value.checked_mul(scale).ok_or_else(bad)?;
    if tokens == 0 {
        return Err(SlicingError::NotPositive {
            what: "token count",
            value: text.to_string(),
        });
    }
    Ok(tokens)
}
