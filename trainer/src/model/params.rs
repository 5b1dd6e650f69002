//! Parameters of a stage: which exist where, and a deterministic initialisation by name.
//!
//! Every tensor's initial values depend only on the run's seed and the tensor's name, never on the
//! partition, so a 4-stage run and the single-device reference start from identical weights.

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::ModelConfig;
use super::names::{layer_param, EMBED, FINAL_NORM, LAYER_BIASES, LAYER_PARTS, LM_HEAD};

/// Named tensors (parameters, gradients or optimizer moments).
pub type TensorMap = BTreeMap<String, Tensor>;

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases, as `transformers` initialises them).
    Zeros,
}

/// One parameter: name, shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Hugging Face name.
    pub name: String,
    /// Shape (of the rows held, for a vocabulary shard).
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: Init,
    /// For a vocabulary shard: the rows held, of a whole tensor of `vocab` rows.
    pub rows: Option<Range<usize>>,
}

impl ParamSpec {
    /// This parameter's part of the whole-model tensor `whole` (its rows, for a shard).
    pub fn part_of(&self, whole: &Tensor) -> candle_core::Result<Tensor> {
        match &self.rows {
            Some(rows) => whole.narrow(0, rows.start, rows.len()),
            None => Ok(whole.clone()),
        }
    }
}

/// Rows `[start, end)` of a `vocab`-row table that stage `stage` of `stages` holds under
/// vocabulary parallelism: even shares, the first `vocab mod stages` stages one row more.
pub fn vocab_rows(vocab: usize, stages: usize, stage: usize) -> Range<usize> {
    let (base, extra) = (vocab / stages, vocab % stages);
    let start = stage * base + stage.min(extra);
    start..start + base + usize::from(stage < extra)
}

/// What part of the model a stage holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// Layer ranges, one per chunk the stage runs.
    pub layers: Vec<Range<usize>>,
    /// Holds the embedding (runs virtual stage 0).
    pub embedding: bool,
    /// Holds the final norm and LM head (runs the last virtual stage).
    pub head: bool,
    /// Vocabulary parallelism: the rows of the embedding (and of an untied LM head) this stage
    /// holds, in place of whole tables on the first and last stages.
    pub vocab_rows: Option<Range<usize>>,
}

/// Parameters of the layers `layers` and, if asked, the embedding and head.
pub fn param_specs(cfg: &ModelConfig, holding: &Holding) -> Vec<ParamSpec> {
    const STD: f64 = 0.02;
    let (h, f, d) = (cfg.hidden, cfg.ffn_hidden, cfg.head_dim());
    let (q, kv) = (cfg.heads * d, cfg.kv_heads * d);
    // GPT-2's scaled init of residual-output projections keeps the residual stream's variance flat.
    let out_std = STD / (2.0 * cfg.layers as f64).sqrt();
    let mut specs = Vec::new();
    let table = |name: &str, rows: &Range<usize>| ParamSpec {
        name: name.to_string(),
        shape: vec![rows.len(), h],
        init: Init::Normal(STD),
        rows: (rows.len() != cfg.vocab).then(|| rows.clone()),
    };
    let whole = 0..cfg.vocab;
    let (embed_rows, head_rows) = match &holding.vocab_rows {
        Some(rows) => (Some(rows), (!cfg.tie_embeddings).then_some(rows)),
        None => (
            (holding.embedding || (holding.head && cfg.tie_embeddings)).then_some(&whole),
            (holding.head && !cfg.tie_embeddings).then_some(&whole),
        ),
    };
    if let Some(rows) = embed_rows {
        specs.push(table(EMBED, rows));
    }
    let mut push = |name: String, shape: Vec<usize>, init: Init| {
        specs.push(ParamSpec {
            name,
            shape,
            init,
            rows: None,
        })
    };
    for range in &holding.layers {
        for layer in range.clone() {
            let shapes: [(Vec<usize>, Init); 9] = [
                (vec![h], Init::Ones),
                (vec![q, h], Init::Normal(STD)),
                (vec![kv, h], Init::Normal(STD)),
                (vec![kv, h], Init::Normal(STD)),
                (vec![h, q], Init::Normal(out_std)),
                (vec![h], Init::Ones),
                (vec![f, h], Init::Normal(STD)),
                (vec![f, h], Init::Normal(STD)),
                (vec![h, f], Init::Normal(out_std)),
            ];
            let bias_widths = [q, kv, kv, h, f, f, h];
            for (part, (shape, init)) in LAYER_PARTS.iter().zip(shapes) {
                push(layer_param(layer, part), shape, init);
            }
            for (i, (part, width)) in LAYER_BIASES.iter().zip(bias_widths).enumerate() {
                if cfg.has_bias(i) {
                    push(layer_param(layer, part), vec![width], Init::Zeros);
                }
            }
        }
    }
    if holding.head {
        push(FINAL_NORM.to_string(), vec![h], Init::Ones);
    }
    if let Some(rows) = head_rows {
        specs.push(table(LM_HEAD, rows));
    }
    specs
}

/// FNV-1a of the seed and the name: a stable per-tensor seed.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Materialises parameters deterministically from `seed`; a vocabulary shard takes its rows of
/// the whole tensor, so any sharding starts from the same weights.
pub fn init_params(
    specs: &[ParamSpec],
    seed: u64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<TensorMap> {
    let mut params = TensorMap::new();
    for spec in specs {
        let count: usize = spec.shape.iter().product();
        let tensor = match spec.init {
            Init::Ones => Tensor::ones(spec.shape.as_slice(), dtype, device)?,
            Init::Zeros => Tensor::zeros(spec.shape.as_slice(), dtype, device)?,
            Init::Normal(std) => {
                let mut rng = ChaCha8Rng::seed_from_u64(tensor_seed(seed, &spec.name));
                let normal = Normal::new(0.0, std).expect("a positive, finite standard deviation");
                // A shard draws the whole tensor's values up to its last row and keeps its rows.
                let row = count / spec.shape[0].max(1);
                let (skip, take) = match &spec.rows {
                    Some(rows) => (rows.start * row, count),
                    None => (0, count),
                };
                let values: Vec<f64> = (0..skip + take)
                    .map(|_| normal.sample(&mut rng))
                    .skip(skip)
                    .collect();
                Tensor::from_vec(values, spec.shape.as_slice(), device)?.to_dtype(dtype)?
            }
        };
        params.insert(spec.name.clone(), tensor);
    }
    Ok(params)
}

/// Zero tensors shaped like `like` (gradient accumulators, optimizer moments).
pub fn zeros_like(like: &TensorMap, dtype: DType) -> candle_core::Result<TensorMap> {
    like.iter()
        .map(|(name, t)| Ok((name.clone(), Tensor::zeros(t.dims(), dtype, t.device())?)))
        .collect()
}
