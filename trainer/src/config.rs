//! `seqpipe train`'s configuration: a TOML file, every field with a default, so that no file at
//! all means "train the tiny model on generated data with 4 SlimPipe stages".

use crate::data::Packing;
use crate::error::{Error, Result};
use crate::runtime::offload::Offload;
use crate::runtime::recompute::Recompute;
use serde::{Deserialize, Serialize};

use crate::init::InitFrom;
use crate::model::ModelConfig;
use crate::optim::OptimConfig;

/// Element type of parameters and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// 64-bit floats (the oracle tests' precision).
    F64,
    /// bfloat16 storage, f32 accumulation inside the kernels.
    Bf16,
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// How each sequence is cut into slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SlicingMethod {
    /// Equal lengths (SlimPipe).
    Uniform,
    /// Equal FLOPs (Seq1F1B).
    Balanced,
}

/// Which of SlimPipe's exchange pairs a run keeps (`parallel.exchange_pairs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExchangePairs {
    /// Only the pairs that do not lengthen the iteration simulated with each compute's FLOPs.
    Shorten,
    /// Every pair of every steady step, as the paper does (what `seqpipe plan` prices).
    Level,
}

impl ExchangePairs {
    /// The pass's policy.
    pub fn policy(self) -> seqpipe_schedule::ExchangePolicy {
        match self {
            ExchangePairs::Shorten => seqpipe_schedule::ExchangePolicy::Shorten,
            ExchangePairs::Level => seqpipe_schedule::ExchangePolicy::Level,
        }
    }
}

/// Pipeline layout and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// Pipeline stages (threads).
    pub stages: u32,
    /// Schedule kind, as `seqpipe schedule --kind` names it.
    pub schedule: String,
    /// Micro-batches per iteration.
    pub microbatches: u32,
    /// Slices per sequence (1 = unsliced).
    pub slices: u32,
    /// Model chunks per stage (interleaved schedules).
    pub chunks: u32,
    /// Group size of the GIS schedule.
    pub group: Option<u32>,
    /// Slicing method.
    pub slicing: SlicingMethod,
    /// Layers per virtual stage (default: even split).
    pub layers: Option<Vec<usize>>,
    /// Seconds a stage waits for a peer before failing.
    pub timeout_secs: u64,
    /// A schedule to run instead of the generated one: PyTorch's CSV layout (one row per stage,
    /// compact action text) or seqpipe's JSON, lowered or not; checked before step 0.
    pub schedule_file: Option<std::path::PathBuf>,
    /// Data-parallel replicas of the pipeline (default: 1 in one process; `WORLD_SIZE / stages`
    /// in a multi-process run, which must agree when this is set).
    pub replicas: Option<u32>,
    /// Activations offloaded to host memory (PipeOffload): `"none"`, `"auto"` or a fraction of
    /// each stage's units, placed by the planner (`runtime::offload`).
    pub offload: Offload,
    /// Records recomputed before their backward instead of kept: `"none"`, `"selective"`,
    /// `"full"`, `"full:N"` or `"full:N0,N1,…"` (`runtime::recompute`).
    pub recompute: Recompute,
    /// Host-link bandwidth in GB/s (10^9 bytes per second) for offloads and reloads; unset: as
    /// fast as memory copies go. A figure emulates a PCIe link on a CPU run.
    pub host_link_bandwidth: Option<f64>,
    /// Bytes per stage the predicted peak (model states + activations) must fit: the least
    /// offload that fits is chosen (`runtime::budget`), or the run is refused with the shortfall.
    pub memory_budget: Option<u64>,
    /// Tensor-parallel size, as `seqpipe plan --emit-config` writes a plan. Only 1 runs: a
    /// larger value is refused by name, never ignored.
    pub tensor_parallel: u32,
    /// Context-parallel size, as `seqpipe plan --emit-config` writes a plan. Only 1 runs (as
    /// for `tensor_parallel`).
    pub context_parallel: u32,
    /// Embedding and LM head sharded over the vocabulary across stages (SlimPipe, as the planner
    /// prices it): each stage holds `V/p` rows and runs its share of every slice's embedding,
    /// head and loss (`EMBED`, `HEAD`, `EMBED_B` actions).
    pub vocab_parallel: bool,
    /// SlimPipe's attention context exchange between ranks (as `seqpipe plan --emit-config`
    /// writes a SlimPipe plan, whose equal-cost steps assume it): the ranks of each steady step
    /// are paired by their slices' cache lengths and the heavy one's oldest K/V prefix is
    /// attended by the light one.
    pub attention_exchange: bool,
    /// Which exchange pairs run (default `shorten`); only with `attention_exchange = true`.
    pub exchange_pairs: Option<ExchangePairs>,
    /// Elastic pipelines (InfiniPipe): each step takes whole documents for the tokens of
    /// `microbatches × batch × seq_len`, splits the long ones and packs the short ones into
    /// compute-balanced chunks (`slices` mesh slices of the longest), and runs them longest
    /// first, micro-batches of their own shapes. Needs `schedule = "seq1f1b"`, `chunks = 1`,
    /// `slicing = "balanced"` and `data.packing = "masked"`.
    pub elastic: bool,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            stages: 4,
            schedule: "slimpipe".into(),
            microbatches: 4,
            slices: 4,
            chunks: 2,
            group: None,
            slicing: SlicingMethod::Uniform,
            layers: None,
            timeout_secs: 60,
            replicas: None,
            schedule_file: None,
            offload: Offload::None,
            recompute: Recompute::None,
            host_link_bandwidth: None,
            memory_budget: None,
            tensor_parallel: 1,
            context_parallel: 1,
            vocab_parallel: false,
            attention_exchange: false,
            exchange_pairs: None,
            elastic: false,
        }
    }
}

/// Where training tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// Generated first-order Markov text (no files).
    Markov,
    /// Generated multi-query key–value retrieval: a long-context task scored on the answers,
    /// with an accuracy metric.
    Retrieval,
    /// Generated passkey retrieval: a number hidden in filler at a random depth, asked for at
    /// the end and scored on the answer (text with `data.tokenizer`, else token ids).
    Passkey,
    /// A token file (`.bin`, little-endian u16 or u32, as nanoGPT and llm.c write them).
    Tokens,
    /// A text file, or JSONL with one document per line, tokenized with `data.tokenizer`.
    Text,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Source kind.
    pub kind: DataKind,
    /// Token file, or text/JSONL corpus.
    pub path: Option<std::path::PathBuf>,
    /// Bytes per token of a token file: 2 (u16) or 4 (u32).
    pub token_bytes: usize,
    /// Hugging Face `tokenizer.json` for text corpora.
    pub tokenizer: Option<std::path::PathBuf>,
    /// JSONL field holding each document's text.
    pub jsonl_field: String,
    /// How a token stream's documents share a row: `plain` (back to back, attending across
    /// them) or `masked` (each document its own causal sequence; needs end-of-document tokens).
    pub packing: Packing,
    /// The token that ends each document, for `packing = "masked"` (text corpora default to
    /// their tokenizer's end-of-text token).
    pub eos: Option<u32>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            batch: 2,
            seq_len: 256,
            kind: DataKind::Markov,
            path: None,
            token_bytes: 2,
            tokenizer: None,
            jsonl_field: "text".into(),
            packing: Packing::Plain,
            eos: None,
        }
    }
}

/// Checkpoints and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Directory of the latest checkpoint (none: no checkpoints).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Write a checkpoint every this many steps (and after the last step).
    pub checkpoint_every: Option<u64>,
    /// Append one JSON line of metrics per step to this file.
    pub metrics: Option<std::path::PathBuf>,
}

/// Everything `seqpipe train` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seed of the weights and the data.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Parameter and activation precision.
    pub precision: Precision,
    /// The model.
    pub model: ModelConfig,
    /// Start from a Hugging Face checkpoint: its model and weights (`crate::init`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
    /// The data.
    pub data: DataConfig,
    /// The pipeline.
    pub parallel: ParallelConfig,
    /// The optimizer.
    pub optim: OptimConfig,
    /// Checkpoints and metrics.
    pub output: OutputConfig,
    /// Where a threaded run's stages live: "cpu", or "cuda" / "cuda:N" (a `cuda` build).
    pub device: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 1,
            steps: 100,
            precision: Precision::F32,
            model: ModelConfig::tiny(),
            init_from: None,
            data: DataConfig::default(),
            parallel: ParallelConfig::default(),
            optim: OptimConfig::default(),
            output: OutputConfig::default(),
            device: "cpu".into(),
        }
    }
}

impl TrainConfig {
    /// Parses a TOML file's text; unknown keys are errors naming them.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        crate::init::refuse_model_with_init(text, false)?;
        Ok(cfg)
    }
}

/// The leaves in which two JSON documents differ, as `a.b.c: X {labels.0}, Y {labels.1}` lines
/// (for messages that name exactly which settings disagree).
pub fn json_differences(
    a: &serde_json::Value,
    b: &serde_json::Value,
    labels: (&str, &str),
) -> Vec<String> {
    let mut out = Vec::new();
    diff_json("", a, b, labels, &mut out);
    out
}

fn diff_json(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    labels: (&str, &str),
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let none = Value::Null;
                let (u, v) = (x.get(k).unwrap_or(&none), y.get(k).unwrap_or(&none));
                diff_json(&sub, u, v, labels, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} {}, {b} {}", labels.0, labels.1)),
        _ => {}
    }
}
