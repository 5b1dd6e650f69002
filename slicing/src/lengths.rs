//! Sequence-length distributions for elastic planning: synthetic long tails and real corpora.
//!
//! Synthetic: log-normal (`lognormal:mu=8.5,sigma=1.3`) and power-law / Pareto
//! (`powerlaw:alpha=1.2,min=512`) lengths, truncated at the context length by rejection so the
//! tail keeps its shape below the cut instead of piling up at it. Sampling is seeded
//! (ChaCha8), so benchmarks and tests see the same batch on every machine.
//! Real: one length per line, or a numeric field of JSON lines (`{"len": 4096, …}`); the crate
//! stays IO-free, the caller reads the file.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{parse_lengths, LengthDist};
//! assert_eq!(parse_lengths("4096\n# a comment\n512\n", None).unwrap(), vec![4096, 512]);
//! assert_eq!(parse_lengths(r#"{"len": 300}"#, Some("len")).unwrap(), vec![300]);
//! let dist: LengthDist = "lognormal:mu=8.5,sigma=1.3".parse().unwrap();
//! let batch = dist.sample(64, 32768, 7).unwrap();
//! assert!(batch.len() == 64 && batch.iter().all(|&l| (1..=32768).contains(&l)));
//! assert_eq!(batch, dist.sample(64, 32768, 7).unwrap()); // seeded
//! ```

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{LogNormal, Pareto};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SlicingError};

/// Draws per accepted length before truncation is declared hopeless.
const MAX_DRAWS_PER_LENGTH: usize = 1000;

/// A long-tailed distribution of sequence lengths (in tokens).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LengthDist {
    /// `exp(N(mu, sigma²))`.
    LogNormal {
        /// Mean of the underlying normal (ln tokens).
        mu: f64,
        /// Standard deviation of the underlying normal.
        sigma: f64,
    },
    /// Pareto: `P(len > x) = (min/x)^alpha` for `x ≥ min`.
    PowerLaw {
        /// Tail exponent (smaller = heavier tail).
        alpha: f64,
        /// Smallest length.
        min: f64,
    },
}

impl LengthDist {
    /// Checks the parameters: finite, `sigma > 0`, `alpha > 0`, `min ≥ 1`.
    pub fn validated(self) -> Result<Self> {
        let bad = |reason: &str| SlicingError::BadDistribution {
            text: self.to_string(),
            reason: reason.to_string(),
        };
        match self {
            LengthDist::LogNormal { mu, sigma } => {
                if !mu.is_finite() || !sigma.is_finite() || sigma <= 0.0 {
                    return Err(bad("mu must be finite and sigma finite and > 0"));
                }
            }
            LengthDist::PowerLaw { alpha, min } => {
                if !alpha.is_finite() || alpha <= 0.0 || !min.is_finite() || min < 1.0 {
                    return Err(bad("alpha must be finite and > 0, min finite and >= 1"));
                }
            }
        }
        Ok(self)
    }

    /// `count` lengths in `1..=context`, seeded; values above `context` are redrawn.
    pub fn sample(&self, count: usize, context: u64, seed: u64) -> Result<Vec<u64>> {
        self.validated()?;
        if context == 0 {
            return Err(SlicingError::NotPositive {
                what: "context length",
                value: "0".into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let draw: Box<dyn Fn(&mut ChaCha8Rng) -> f64> = match *self {
            LengthDist::LogNormal { mu, sigma } => {
                let d = LogNormal::new(mu, sigma).map_err(|e| self.error(e.to_string()))?;
                Box::new(move |r| r.sample(d))
            }
            LengthDist::PowerLaw { alpha, min } => {
                let d = Pareto::new(min, alpha).map_err(|e| self.error(e.to_string()))?;
                Box::new(move |r| r.sample(d))
            }
        };
        let mut out = Vec::with_capacity(count);
        let mut draws = 0usize;
        while out.len() < count {
            draws += 1;
            if draws > MAX_DRAWS_PER_LENGTH * count.max(1) {
                return Err(self.error(format!(
                    "fewer than 1 in {MAX_DRAWS_PER_LENGTH} draws falls at or below the context \
                     length {context}; lower mu/min or raise the context"
                )));
            }
            let x = draw(&mut rng).round();
            if x <= context as f64 {
                out.push((x as u64).max(1));
            }
        }
        Ok(out)
    }

    fn error(&self, reason: String) -> SlicingError {
        SlicingError::BadDistribution {
            text: self.to_string(),
            reason,
        }
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthDist::LogNormal { mu, sigma } => write!(f, "lognormal:mu={mu},sigma={sigma}"),
            LengthDist::PowerLaw { alpha, min } => write!(f, "powerlaw:alpha={alpha},min={min}"),
        }
    }
}

impl FromStr for LengthDist {
    type Err = SlicingError;

    /// `lognormal:mu=M,sigma=S` or `powerlaw:alpha=A,min=X` (an optional `dist:` prefix is
    /// accepted, as on the command line).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: String| SlicingError::BadDistribution {
            text: text.to_string(),
            reason,
        };
        let body = text.trim();
        let body = body.strip_prefix("dist:").unwrap_or(body);
        let (name, params) = body.split_once(':').unwrap_or((body, ""));
        let mut values = std::collections::BTreeMap::new();
        for pair in params.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("`{pair}` is not key=value")))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{v}` is not a number")))?;
            values.insert(k.trim().to_ascii_lowercase(), v);
        }
        let get = |key: &str| {
            values
                .get(key)
                .copied()
                .ok_or_else(|| bad(format!("missing parameter `{key}`")))
        };
        let dist = match name.trim().to_ascii_lowercase().as_str() {
            "lognormal" | "log-normal" => LengthDist::LogNormal {
                mu: get("mu")?,
                sigma: get("sigma")?,
            },
            "powerlaw" | "power-law" | "pareto" => LengthDist::PowerLaw {
                alpha: get("alpha")?,
                min: get("min")?,
            },
            other => {
                return Err(bad(format!(
                    "unknown distribution `{other}`; known: lognormal:mu=..,sigma=.., \
                     powerlaw:alpha=..,min=.."
                )))
            }
        };
        let allowed: &[&str] = match dist {
            LengthDist::LogNormal { .. } => &["mu", "sigma"],
            LengthDist::PowerLaw { .. } => &["alpha", "min"],
        };
        if let Some(extra) = values.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown parameter `{extra}`; expected {}",
                allowed.join(", ")
            )));
        }
        dist.validated()
    }
}

/// Lengths from text: one positive integer per line, or JSON lines whose `field` holds the
/// length (a number, or a string/array whose size is the length). Blank lines and `#` comments
/// are skipped.
pub fn parse_lengths(text: &str, field: Option<&str>) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| SlicingError::BadLengthLine {
            line: i + 1,
            text: line.chars().take(60).collect(),
            reason,
        };
        let len = match field {
            None => line
                .parse::<u64>()
                .map_err(|_| bad("expected a whole number of tokens".into()))?,
            Some(name) => {
                let value: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
                match value.get(name) {
                    Some(serde_json::Value::Number(n)) => n
                        .as_u64()
                        .ok_or_else(|| bad(format!("field `{name}` is not a whole number")))?,
                    Some(serde_json::Value::String(s)) => s.chars().count() as u64,
                    Some(serde_json::Value::Array(a)) => a.len() as u64,
                    _ => return Err(bad(format!("no numeric, string or array field `{name}`"))),
                }
            }
        };
        if len == 0 {
            return Err(bad("lengths must be at least 1".into()));
        }
        out.push(len);
    }
    if out.is_empty() {
        return Err(SlicingError::NotPositive {
            what: "number of lengths in the input",
            value: "0".into(),
        });
    }
    Ok(out)
}
