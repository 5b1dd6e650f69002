//! RoPE scaling, as Hugging Face `transformers` defines it for Llama checkpoints
//! (`rope_scaling`, or `rope_parameters` in `transformers` 5): each type turns the base's inverse
//! frequencies `θ^(−2i/d)` into others, and YaRN also scales `cos` and `sin` by an attention
//! factor. `dynamic` NTK is refused: it changes the frequencies with the length of the input at
//! inference, which is not a model training can fix.
//!
//! - `linear`: every frequency divided by `factor` (positions interpolated).
//! - `llama3`: wavelengths `2π/f` longer than `original / low_freq_factor` divided by `factor`,
//!   shorter than `original / high_freq_factor` kept, and those between blended by
//!   `s = (original / wavelength − low) / (high − low)`: `(1 − s)·f/factor + s·f`.
//! - `yarn`: the pairs between the correction dims of `beta_fast` and `beta_slow` rotations over
//!   `original` positions (`d·ln(original / (2π·β)) / (2·ln θ)`, floored and ceiled unless
//!   `truncate` is false) ramp linearly from the base's frequencies to those divided by
//!   `factor`; the attention factor is `attention_factor`, else `m(factor, mscale) /
//!   m(factor, mscale_all_dim)` when both are set, else `m(factor, 1)`, with
//!   `m(s, k) = 0.1·k·ln s + 1` for `s > 1` (1 otherwise).

use serde::{Deserialize, Serialize};

/// A RoPE scaling type and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Position interpolation.
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent interpolation.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths beyond `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context the checkpoint was pre-trained with.
        original_max_positions: usize,
    },
    /// YaRN.
    Yarn {
        /// Divisor of the interpolated frequencies.
        factor: f64,
        /// The context the checkpoint was pre-trained with.
        original_max_positions: usize,
        /// Rotations that bound the extrapolated pairs (32 by default).
        #[serde(default = "beta_fast")]
        beta_fast: f64,
        /// Rotations that bound the interpolated pairs (1 by default).
        #[serde(default = "beta_slow")]
        beta_slow: f64,
        /// Factor on `cos` and `sin` (derived from `factor` when absent).
        #[serde(default)]
        attention_factor: Option<f64>,
        /// Numerator scale of the derived attention factor.
        #[serde(default)]
        mscale: Option<f64>,
        /// Denominator scale of the derived attention factor.
        #[serde(default)]
        mscale_all_dim: Option<f64>,
        /// Round the correction range outwards to whole dims (true by default).
        #[serde(default = "truncate")]
        truncate: bool,
    },
}

fn beta_fast() -> f64 {
    32.0
}

fn beta_slow() -> f64 {
    1.0
}

fn truncate() -> bool {
    true
}

fn yarn_mscale(scale: f64, k: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * k * scale.ln() + 1.0
    }
}

impl RopeScaling {
    /// The inverse frequencies of `base` (one per rotated pair) after scaling, and the factor on
    /// `cos` and `sin`.
    pub fn apply(&self, base: &[f64], theta: f64) -> (Vec<f64>, f64) {
        match *self {
            RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_positions,
            } => {
                let original = original_max_positions as f64;
                let scaled = base.iter().map(|&f| {
                    let wavelength = 2.0 * std::f64::consts::PI / f;
                    if wavelength < original / high {
                        f
                    } else if wavelength > original / low {
                        f / factor
                    } else {
                        let s = (original / wavelength - low) / (high - low);
                        (1.0 - s) * f / factor + s * f
                    }
                });
                (scaled.collect(), 1.0)
            }
            RopeScaling::Yarn { .. } => self.yarn(base, theta),
        }
    }

    fn yarn(&self, base: &[f64], theta: f64) -> (Vec<f64>, f64) {
        let RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } = *self
        else {
            unreachable!("called for YaRN only")
        };
        let dim = 2.0 * base.len() as f64;
        let correction = |rotations: f64| {
            let turns = original_max_positions as f64 / (rotations * 2.0 * std::f64::consts::PI);
            dim * turns.ln() / (2.0 * theta.ln())
        };
        let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
        if truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
        if low == high {
            high += 0.001;
        }
        let frequencies = base.iter().enumerate().map(|(i, &f)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolated = 1.0 - ramp;
            f / factor * (1.0 - extrapolated) + f * extrapolated
        });
        let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                yarn_mscale(factor, m) / yarn_mscale(factor, all)
            }
            _ => yarn_mscale(factor, 1.0),
        });
        (frequencies.collect(), attention)
    }

    /// Problems with the parameters, each naming the bad value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut positive = |name: &str, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                out.push(format!("rope_scaling.{name} = {v}: give a positive number"));
            }
        };
        match *self {
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                positive("factor", factor);
                positive("low_freq_factor", low_freq_factor);
                positive("high_freq_factor", high_freq_factor);
                positive("original_max_positions", original_max_positions as f64);
                if high_freq_factor <= low_freq_factor {
                    out.push(format!(
                        "rope_scaling.high_freq_factor = {high_freq_factor} must exceed \
                         low_freq_factor = {low_freq_factor}"
                    ));
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                positive("factor", factor);
                positive("original_max_positions", original_max_positions as f64);
                positive("beta_fast", beta_fast);
                positive("beta_slow", beta_slow);
                if let Some(a) = attention_factor {
                    positive("attention_factor", a);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_short_wavelengths_divides_long_ones_and_blends_between() {
        // Wavelengths 2π/f: 6.28, 62.8, 628, 6283 against bounds 16/4 = 4 and 16/1 = 16.
        let base = [1.0, 0.1, 0.01, 0.001];
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 16,
        };
        let (f, attention) = s.apply(&base, 10_000.0);
        let blend = (16.0 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        assert!((f[0] - ((1.0 - blend) / 8.0 + blend)).abs() < 1e-15);
        assert_eq!(&f[1..], &[0.1 / 8.0, 0.01 / 8.0, 0.001 / 8.0]);
        assert_eq!(attention, 1.0);
    }

    #[test]
    fn yarn_ramps_between_its_correction_dims_and_scales_attention() {
        let theta: f64 = 10_000.0;
        let base: Vec<f64> = (0..4).map(|i| theta.powf(-2.0 * i as f64 / 8.0)).collect();
        let s = RopeScaling::Yarn {
            factor: 4.0,
            original_max_positions: 16,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        };
        let (f, attention) = s.apply(&base, theta);
        // Correction dims: 8·ln(16/(2π·32))/(2 ln 10⁴) < 0 → 0; 8·ln(16/2π)/(2 ln 10⁴) → ceil 1.
        assert_eq!(f[0], base[0]);
        assert_eq!(&f[1..], &[base[1] / 4.0, base[2] / 4.0, base[3] / 4.0]);
        assert!((attention - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    }
}
