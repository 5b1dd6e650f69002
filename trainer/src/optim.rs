//! AdamW with decoupled weight decay, global-norm gradient clipping and a warm-up + cosine
//! learning-rate schedule.
//!
//! Each stage owns the optimizer state of its own parameters. Clipping needs the norm over *all*
//! stages' gradients: each stage contributes [`sum_of_squares`], the trainer all-reduces the sums
//! and passes the resulting scale to [`AdamW::step`].

use crate::error::Error;
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::health::OnNonFinite;
use crate::model::params::{zeros_like, TensorMap};

/// Optimizer and schedule settings (every field optional in TOML: missing ones take the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine, as a fraction of `lr`.
    #[serde(default = "default_min_ratio")]
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Adam β1.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam β2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam ε.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay (not applied to norm weights).
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (none if absent).
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// What a step with a non-finite loss or gradient does (`stop` or `skip`).
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
}

fn default_min_ratio() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 3e-3,
            min_lr_ratio: default_min_ratio(),
            warmup_steps: 10,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.1,
            clip_norm: Some(1.0),
            on_nonfinite: OnNonFinite::Stop,
        }
    }
}

impl OptimConfig {
    /// Learning rate at `step` (0-based) of `total` steps: linear warm-up, then cosine down to
    /// `min_lr_ratio · lr`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    /// Problems with the settings, each naming the field and the valid range.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, value: f64, ok: bool, valid: &str| {
            if !ok {
                out.push(format!("optim.{name} = {value}: must be {valid}"));
            }
        };
        check(
            "lr",
            self.lr,
            self.lr.is_finite() && self.lr > 0.0,
            "finite and positive",
        );
        check(
            "min_lr_ratio",
            self.min_lr_ratio,
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "in [0, 1]",
        );
        check(
            "beta1",
            self.beta1,
            (0.0..1.0).contains(&self.beta1),
            "in [0, 1)",
        );
        check(
            "beta2",
            self.beta2,
            (0.0..1.0).contains(&self.beta2),
            "in [0, 1)",
        );
        check(
            "eps",
            self.eps,
            self.eps.is_finite() && self.eps > 0.0,
            "finite and positive",
        );
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "finite and ≥ 0",
        );
        if let Some(c) = self.clip_norm {
            check(
                "clip_norm",
                c,
                c.is_finite() && c > 0.0,
                "finite and positive",
            );
        }
        let shrink = self.lr * self.weight_decay;
        if shrink >= 1.0 {
            out.push(format!(
                "optim.lr × optim.weight_decay = {} × {} = {shrink}: each step would scale every \
                 weight by 1 − lr·weight_decay ≤ 0; keep the product well below 1",
                self.lr, self.weight_decay
            ));
        }
        out
    }
}

/// Σ g² over a stage's gradients (f64), its share of the global norm.
pub fn sum_of_squares(grads: &TensorMap) -> Result<f64> {
    let mut total = 0.0;
    for g in grads.values() {
        total += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(total)
}

/// Factor to multiply gradients by so their global norm is at most `clip` (1 if no clipping).
pub fn clip_scale(global_sum_of_squares: f64, clip: Option<f64>) -> f64 {
    match clip {
        Some(c) if global_sum_of_squares.sqrt() > c => c / global_sum_of_squares.sqrt(),
        _ => 1.0,
    }
}

/// AdamW state of one stage's parameters. Parameters kept in a low precision (bf16) for compute
/// get f32 master weights here: the update is applied to the master copy and only then rounded
/// into the parameter, so updates smaller than a bf16 step accumulate instead of vanishing.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Settings.
    pub cfg: OptimConfig,
    /// Steps taken.
    pub steps: u64,
    /// First moments.
    pub m: TensorMap,
    /// Second moments.
    pub v: TensorMap,
    /// f32 master weights of the parameters held in a low precision (empty for f32 and f64).
    pub master: TensorMap,
}

impl AdamW {
    /// Fresh state for `params` (moments in f32, or f64 for f64 parameters; f32 master copies
    /// of low-precision parameters).
    pub fn new(cfg: OptimConfig, params: &TensorMap) -> Result<Self> {
        let dtype = moment_dtype(params);
        let master = params
            .iter()
            .filter(|(_, t)| needs_master(t.dtype()))
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(AdamW {
            cfg,
            steps: 0,
            m: zeros_like(params, dtype)?,
            v: zeros_like(params, dtype)?,
            master,
        })
    }

    /// One update with learning rate `lr`, gradients multiplied by `grad_scale` (clipping).
    pub fn step(
        &mut self,
        params: &mut TensorMap,
        grads: &TensorMap,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.steps += 1;
        let c = &self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - c.beta2.powi(self.steps as i32);
        for (name, p) in params.iter_mut() {
            let Some(g) = grads.get(name) else { continue };
            let (m, v) = (&self.m[name], &self.v[name]);
            let dt = m.dtype();
            let g = (g.to_dtype(dt)? * grad_scale)?;
            let m_new = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v_new = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m_new / bias1)? / ((&v_new / bias2)?.sqrt()? + c.eps)?)?;
            // Norm weights are scales around 1: decaying them towards 0 would fight the model.
            let decay = if name.contains("norm") {
                0.0
            } else {
                c.weight_decay
            };
            let before = match self.master.get(name) {
                Some(master) => master.clone(),
                None => p.to_dtype(dt)?,
            };
            let after = ((&before * (1.0 - lr * decay))? - (update * lr)?)?;
            *p = after.to_dtype(p.dtype())?;
            if self.master.contains_key(name) {
                self.master.insert(name.clone(), after);
            }
            self.m.insert(name.clone(), m_new);
            self.v.insert(name.clone(), v_new);
        }
        Ok(())
    }

    /// The weights the optimizer trains, by name: the f32 master copy where there is one, else
    /// the parameter itself. Checkpoints save these.
    pub fn weights(&self, params: &TensorMap) -> TensorMap {
        params
            .iter()
            .map(|(n, p)| (n.clone(), self.master.get(n).unwrap_or(p).clone()))
            .collect()
    }

    /// The moments as one map with `m.`/`v.` prefixes (a checkpoint's optimizer file).
    pub fn state(&self) -> TensorMap {
        let m = self.m.iter().map(|(n, t)| (format!("m.{n}"), t.clone()));
        let v = self.v.iter().map(|(n, t)| (format!("v.{n}"), t.clone()));
        m.chain(v).collect()
    }

    /// Restores `params` (and their master copies) from a whole-model `weights` map and the
    /// moments from `state` (as [`AdamW::state`] wrote it), after `steps` steps; tensors move to
    /// each parameter's device.
    pub fn restore(
        &mut self,
        params: &mut TensorMap,
        weights: &TensorMap,
        steps: u64,
        state: &TensorMap,
    ) -> crate::error::Result<()> {
        for (name, p) in params.iter_mut() {
            let find = |map: &TensorMap, key: &str| {
                map.get(key)
                    .cloned()
                    .ok_or_else(|| Error::Checkpoint(format!("checkpoint lacks {key}")))
            };
            let device = p.device().clone();
            let place = |t: Tensor, dtype: DType| -> Result<Tensor> {
                t.to_dtype(dtype)?.to_device(&device)
            };
            let saved = find(weights, name)?;
            if self.master.contains_key(name) {
                self.master
                    .insert(name.clone(), place(saved.clone(), DType::F32)?);
            }
            let moments = self.m[name].dtype();
            let m = place(find(state, &format!("m.{name}"))?, moments)?;
            let v = place(find(state, &format!("v.{name}"))?, moments)?;
            *p = place(saved, p.dtype())?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        self.steps = steps;
        Ok(())
    }
}

/// Whether parameters of `dtype` are too coarse to accumulate updates in (bf16, f16).
fn needs_master(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// The dtype the optimizer trains parameters of `dtype` in (f32 for bf16/f16, else `dtype`).
pub fn master_dtype(dtype: DType) -> DType {
    if needs_master(dtype) {
        DType::F32
    } else {
        dtype
    }
}

fn moment_dtype(params: &TensorMap) -> DType {
    if params.values().any(|t| t.dtype() == DType::F64) {
        DType::F64
    } else {
        DType::F32
    }
}

/// Multiplies every tensor of `map` by `factor` (used for clipping before the step, in tests).
pub fn scale(map: &TensorMap, factor: f64) -> Result<TensorMap> {
    map.iter()
        .map(|(n, t)| Ok((n.clone(), (t * factor)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_warms_up_then_decays_to_the_floor() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 4,
            min_lr_ratio: 0.1,
            ..OptimConfig::default()
        };
        assert_eq!(c.lr_at(0, 20), 0.25);
        assert_eq!(c.lr_at(3, 20), 1.0);
        assert!((c.lr_at(4, 20) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(20, 20) - 0.1).abs() < 1e-12);
        assert!(c.lr_at(12, 20) < 1.0 && c.lr_at(12, 20) > 0.1);
    }

    /// An update far below bf16's resolution at 1.0 (2^-8) vanishes when rounded into the
    /// parameter each step, but accumulates in the f32 master copy until it shows.
    #[test]
    fn bf16_parameters_accumulate_small_updates_in_their_master_copy() {
        let cfg = OptimConfig {
            lr: 1e-3,
            warmup_steps: 0,
            weight_decay: 0.0,
            ..OptimConfig::default()
        };
        let one = |dtype| Tensor::ones(4, dtype, &candle_core::Device::Cpu).unwrap();
        let mut params: TensorMap = [("w".to_string(), one(DType::BF16))].into();
        let grads: TensorMap = [("w".to_string(), one(DType::F32))].into();
        let mut opt = AdamW::new(cfg, &params).unwrap();
        for _ in 0..20 {
            opt.step(&mut params, &grads, 1e-3, 1.0).unwrap();
        }
        let w: Vec<f32> = params["w"].to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        let master: Vec<f32> = opt.master["w"].to_vec1().unwrap();
        // 20 steps of ~1e-3 each: the master moved by ~0.02, the bf16 weight follows it.
        assert!((master[0] - 0.98).abs() < 1e-3, "{master:?}");
        assert!(
            w[0] < 1.0 && (w[0] - master[0]).abs() <= 2f32.powi(-8),
            "{w:?}"
        );
        assert_eq!(opt.weights(&params)["w"].dtype(), DType::F32);
    }

    #[test]
    fn clip_scale_only_shrinks() {
        assert_eq!(clip_scale(4.0, Some(1.0)), 0.5);
        assert_eq!(clip_scale(0.25, Some(1.0)), 1.0);
        assert_eq!(clip_scale(100.0, None), 1.0);
    }
}
