//! Every problem with a configuration, found before any work starts and reported together:
//! sizes that bound memory and time, the schedule (generated, offloaded or read from a file),
//! the layer partition, the memory budget, and data and output options that cannot take effect.

use crate::config::{DataKind, Precision, SlicingMethod, TrainConfig};
use crate::data::Packing;
use crate::error::{fail, Result};
use crate::runtime::admit::load_schedule;
use crate::runtime::offload::Offload;
use crate::runtime::partition::Partition;
use crate::runtime::rank_loop::plan_as_run;
use crate::runtime::recompute::Recompute;
use crate::train::schedule_config;
use seqpipe_schedule::{Lowered, Op};

/// What masked packing needs, and settings that would be ignored without it.
fn packing_problems(cfg: &TrainConfig) -> Vec<String> {
    let (data, mut problems) = (&cfg.data, Vec::new());
    let masked = data.packing == Packing::Masked;
    match data.eos {
        Some(eos) if !masked => problems.push(format!(
            "data.eos = {eos} ends documents only for data.packing = \"masked\"; set it, or \
             drop data.eos"
        )),
        Some(eos) if eos as usize >= cfg.model.vocab => problems.push(format!(
            "data.eos = {eos} is outside the model's vocabulary 0..{}",
            cfg.model.vocab
        )),
        _ => {}
    }
    if masked && !matches!(data.kind, DataKind::Tokens | DataKind::Text) {
        problems.push(format!(
            "data.packing = \"masked\" needs documents: data.kind = \"{}\" generates \
             sequences without any; use data.kind = \"tokens\" or \"text\"",
            format!("{:?}", data.kind).to_lowercase()
        ));
    }
    if masked && data.kind == DataKind::Tokens && data.eos.is_none() {
        problems.push(
            "data.packing = \"masked\" over a token file needs data.eos, the id that ends \
             each document"
                .into(),
        );
    }
    if masked && cfg.parallel.attention_exchange {
        problems.push(crate::runtime::input::EXCHANGE_OVER_DOCUMENTS.into());
    }
    problems
}

/// What elastic pipelines need, and what they do not run with yet.
fn elastic_problems(cfg: &TrainConfig) -> Vec<String> {
    let par = &cfg.parallel;
    if !par.elastic {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("parallel.elastic = true {what}"));
        }
    };
    need(
        par.schedule == "seq1f1b",
        format!(
            "runs 1F1B over chunks, as Seq1F1B over slices: set parallel.schedule = \"seq1f1b\" \
             (it is {:?})",
            par.schedule
        ),
    );
    need(
        par.chunks == 1,
        format!(
            "runs one model chunk per stage: set parallel.chunks = 1 (it is {})",
            par.chunks
        ),
    );
    need(
        par.slicing == SlicingMethod::Balanced,
        "cuts the longest document into compute-balanced slices (InfiniPipe's mesh): set \
         parallel.slicing = \"balanced\""
            .into(),
    );
    need(
        cfg.data.packing == Packing::Masked,
        "trains documents masked from each other: set data.packing = \"masked\"".into(),
    );
    let unsupported = [
        (par.vocab_parallel, "parallel.vocab_parallel"),
        (par.attention_exchange, "parallel.attention_exchange"),
        (par.offload != Offload::None, "parallel.offload"),
        (par.schedule_file.is_some(), "parallel.schedule_file"),
        (par.replicas.unwrap_or(1) > 1, "parallel.replicas > 1"),
    ];
    for (set, what) in unsupported {
        need(
            !set,
            format!("does not run with {what} yet: drop one of them"),
        );
    }
    need(
        !(par.memory_budget.is_some() && cfg.precision == Precision::F64),
        "fits a memory budget with the memory model, which covers f32 and bf16 runs: drop \
         parallel.memory_budget or use precision = \"f32\" or \"bf16\""
            .into(),
    );
    let auto = matches!(par.recompute, Recompute::Auto { .. });
    need(
        auto == par.memory_budget.is_some(),
        format!(
            "plans its recomputation under parallel.memory_budget: set both \
             parallel.memory_budget and parallel.recompute = \"auto\", or neither (recompute is \
             {}, the budget {})",
            par.recompute,
            par.memory_budget
                .map_or("unset".to_string(), |b| format!("{b} bytes"))
        ),
    );
    problems
}

/// Every problem with the configuration, found before any work starts.
pub fn check(cfg: &TrainConfig) -> Result<()> {
    let mut problems = cfg.model.problems();
    problems.extend(cfg.optim.problems());
    if cfg.steps == 0 {
        problems.push("steps = 0: must be at least 1".into());
    }
    if cfg.data.batch == 0 || cfg.data.seq_len == 0 {
        problems.push(format!(
            "data.batch = {} and data.seq_len = {} must both be at least 1",
            cfg.data.batch, cfg.data.seq_len
        ));
    }
    if cfg.data.seq_len + 1 > cfg.model.max_positions {
        problems.push(format!(
            "data.seq_len = {} needs RoPE positions up to {}, but model.max_positions = {}",
            cfg.data.seq_len,
            cfg.data.seq_len + 1,
            cfg.model.max_positions
        ));
    }
    if cfg.parallel.slices as usize > cfg.data.seq_len {
        problems.push(format!(
            "parallel.slices = {} is more than the {} tokens of a sequence: use 1..={}",
            cfg.parallel.slices, cfg.data.seq_len, cfg.data.seq_len
        ));
    }
    for (key, size, what) in [
        ("tensor_parallel", cfg.parallel.tensor_parallel, "tensor"),
        ("context_parallel", cfg.parallel.context_parallel, "context"),
    ] {
        if size != 1 {
            problems.push(format!(
                "parallel.{key} = {size}: seqpipe train does not run {what} parallelism yet, only \
                 {key} = 1 (`seqpipe plan` marks such plans \"planner only\"; plan with \
                 --max-tp 1 --max-cp 1 for a layout the trainer runs)"
            ));
        }
    }
    if let (false, Some(pairs)) = (cfg.parallel.attention_exchange, cfg.parallel.exchange_pairs) {
        problems.push(format!(
            "parallel.exchange_pairs = \"{}\" chooses the attention exchange's pairs, but \
             parallel.attention_exchange = false: set it to true, or drop exchange_pairs",
            format!("{pairs:?}").to_lowercase()
        ));
    }
    problems.extend(packing_problems(cfg));
    problems.extend(elastic_problems(cfg));
    if cfg.parallel.vocab_parallel {
        let (vocab, stages) = (cfg.model.vocab, cfg.parallel.stages as usize);
        if vocab < stages {
            problems.push(format!(
                "parallel.vocab_parallel = true with model.vocab = {vocab} over {stages} stages: \
                 every stage holds at least one row, so the vocabulary must be at least {stages}"
            ));
        }
        if let Some(b) = cfg.parallel.memory_budget {
            problems.push(format!(
                "parallel.memory_budget = {b} with parallel.vocab_parallel = true: the budget's \
                 search does not price the sharded head yet; drop one of the two"
            ));
        }
    }
    if cfg.parallel.offload != Offload::None && cfg.parallel.schedule_file.is_some() {
        problems.push(format!(
            "parallel.offload = {} plans offloads for the generated schedule, but \
             parallel.schedule_file places its own OFFLOAD/RELOAD actions: set offload = \"none\"",
            cfg.parallel.offload
        ));
    }
    if let (Some(b), Some(_)) = (cfg.parallel.memory_budget, &cfg.parallel.schedule_file) {
        problems.push(format!(
            "parallel.memory_budget = {b} chooses offloads for the generated schedule, but \
             parallel.schedule_file is given: drop one of them"
        ));
    }
    if let Some(gbs) = cfg.parallel.host_link_bandwidth {
        let par = &cfg.parallel;
        let nothing_moves = par.offload == Offload::None
            && par.memory_budget.is_none()
            && par.schedule_file.is_none();
        if nothing_moves {
            problems.push(format!(
                "parallel.host_link_bandwidth = {gbs} GB/s, but nothing is offloaded: set \
                 offload (or a memory budget, or a schedule file with OFFLOAD actions)"
            ));
        }
        if !(gbs.is_finite() && gbs > 0.0) {
            problems.push(format!(
                "parallel.host_link_bandwidth = {gbs} GB/s: give a positive, finite figure, or \
                 leave it unset for an unlimited link"
            ));
        }
    }
    if let Offload::Chunks(k) = cfg.parallel.offload {
        if k > cfg.parallel.chunks {
            problems.push(format!(
                "parallel.offload = chunks:{k}, but the stages hold {} model chunks: use chunks:0 \
                 to chunks:{}",
                cfg.parallel.chunks, cfg.parallel.chunks
            ));
        }
    }
    let sizes = size_problems(cfg);
    // A schedule is generated only for sizes that bound its time and memory.
    if sizes.is_empty() {
        let loaded = schedule_config(cfg).and_then(|c| load_schedule(cfg, &c));
        match loaded {
            Err(e) => problems.push(format!("schedule: {e:#}")),
            Ok(s) => problems.extend(unused_recompute(cfg, &s)),
        }
    }
    let sizes_ok = sizes.is_empty();
    problems.extend(sizes);
    if sizes_ok {
        match partition_problem(cfg) {
            Some(p) => problems.push(p),
            None => problems.extend(recompute_problems(cfg)),
        }
    }
    // A budget nothing fits is a configuration error, found once here rather than by each rank.
    if sizes_ok && problems.is_empty() && cfg.parallel.memory_budget.is_some() {
        if let Err(e) = plan_as_run(cfg) {
            problems.push(e.to_string());
        }
    }
    problems.extend(output_problems(cfg));
    problems.extend(data_problems(cfg));
    problems.extend(init_problem(cfg));
    if problems.is_empty() {
        Ok(())
    } else {
        fail!(
            Config,
            "invalid configuration:\n  - {}",
            problems.join("\n  - ")
        )
    }
}

/// A recomputation setting a schedule file gives no `RECOMPUTE` to act on (the generated
/// schedule gets them from the setting).
fn unused_recompute(cfg: &TrainConfig, schedule: &Lowered) -> Option<String> {
    let par = &cfg.parallel;
    let recomputes = schedule
        .actions
        .iter()
        .flatten()
        .any(|a| a.op == Op::Recompute);
    (par.schedule_file.is_some() && par.recompute != Recompute::None && !recomputes).then(|| {
        format!(
            "parallel.recompute = {}, but parallel.schedule_file holds no RECOMPUTE action: a \
             schedule file places its own; set recompute = \"none\" or add them",
            par.recompute
        )
    })
}

/// Whether the layers split over the virtual stages as configured (sizes already bounded).
fn partition_problem(cfg: &TrainConfig) -> Option<String> {
    configured_partition(cfg).err()
}

fn configured_partition(cfg: &TrainConfig) -> std::result::Result<Partition, String> {
    let vstages = (cfg.parallel.stages * cfg.parallel.chunks) as usize;
    match &cfg.parallel.layers {
        Some(counts) if counts.len() != vstages => Err(format!(
            "parallel.layers has {} counts for {vstages} virtual stages (stages × chunks)",
            counts.len()
        )),
        Some(counts) => Partition::from_counts(cfg.model.layers, counts),
        None => Partition::even(cfg.model.layers, vstages),
    }
}

/// The recomputation setting against the stages and their chunks' layers (partition valid),
/// and what `auto` needs: a budget to plan under, and no other source of memory actions.
fn recompute_problems(cfg: &TrainConfig) -> Vec<String> {
    let par = &cfg.parallel;
    if par.recompute == Recompute::None {
        return Vec::new();
    }
    if matches!(par.recompute, Recompute::Auto { .. }) {
        let mut problems = Vec::new();
        if par.memory_budget.is_none() {
            problems.push(
                "parallel.recompute = auto plans the fewest recomputed layers that fit a memory \
                 budget, and none was given: set parallel.memory_budget (--memory-budget), or \
                 use selective, full or full:N"
                    .to_string(),
            );
        }
        if par.offload != Offload::None {
            problems.push(format!(
                "parallel.recompute = auto plans recomputation alone, but offload = {}: set \
                 offload = \"none\" (the budget tries offload on its own), or use selective, \
                 full or full:N with offload",
                par.offload
            ));
        }
        if par.schedule_file.is_some() {
            problems.push(
                "parallel.recompute = auto places RECOMPUTE actions, but parallel.schedule_file \
                 places its own: use selective, full or full:N with a schedule file"
                    .to_string(),
            );
        }
        if !problems.is_empty() {
            return problems;
        }
    }
    let Ok(partition) = configured_partition(cfg) else {
        return Vec::new();
    };
    par.recompute
        .problems(par.stages as usize, par.chunks as usize, &partition)
}

/// Bounds that keep a run's memory and the schedule's size sane; each is far above real use.
const MAX_STAGES: u32 = 1024;
const MAX_CHUNKS: u32 = 64;
const MAX_MICROBATCHES: u32 = 1 << 16;
const MAX_BATCH: usize = 1 << 16;
/// Schedule units (stages × chunks × micro-batches × slices): the executor's action lists.
const MAX_UNITS: u64 = 1 << 22;
/// Tokens in one step (micro-batches × batch × sequence length).
const MAX_STEP_TOKENS: u64 = 1 << 32;
/// A week: longer waits for a peer are a configuration error, not patience.
const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Counts whose product sizes memory or time, checked without overflow.
fn size_problems(cfg: &TrainConfig) -> Vec<String> {
    let (p, d) = (&cfg.parallel, &cfg.data);
    let mut problems = Vec::new();
    for (name, value, max) in [
        ("parallel.stages", p.stages as u64, MAX_STAGES as u64),
        ("parallel.chunks", p.chunks as u64, MAX_CHUNKS as u64),
        (
            "parallel.microbatches",
            p.microbatches as u64,
            MAX_MICROBATCHES as u64,
        ),
        ("data.batch", d.batch as u64, MAX_BATCH as u64),
    ] {
        if value > max {
            problems.push(format!("{name} = {value}: at most {max} is supported"));
        }
    }
    let units = [p.stages, p.chunks, p.microbatches, p.slices]
        .iter()
        .try_fold(1u64, |acc, &x| acc.checked_mul(x as u64));
    if units.is_none_or(|u| u > MAX_UNITS) {
        problems.push(format!(
            "stages × chunks × micro-batches × slices = {} × {} × {} × {} is more than the \
             {MAX_UNITS} schedule units supported",
            p.stages, p.chunks, p.microbatches, p.slices
        ));
    }
    let tokens = [p.microbatches as u64, d.batch as u64, d.seq_len as u64]
        .iter()
        .try_fold(1u64, |acc, &x| acc.checked_mul(x));
    if tokens.is_none_or(|t| t > MAX_STEP_TOKENS) {
        problems.push(format!(
            "micro-batches × batch × seq_len = {} × {} × {} tokens per step is more than the \
             {MAX_STEP_TOKENS} supported",
            p.microbatches, d.batch, d.seq_len
        ));
    }
    if !(1..=MAX_TIMEOUT_SECS).contains(&p.timeout_secs) {
        problems.push(format!(
            "parallel.timeout_secs = {}: give 1 to {MAX_TIMEOUT_SECS} seconds",
            p.timeout_secs
        ));
    }
    problems
}

/// Data options that cannot take effect with the chosen source.
fn data_problems(cfg: &TrainConfig) -> Vec<String> {
    let d = &cfg.data;
    let mut problems = Vec::new();
    let generated = matches!(
        d.kind,
        DataKind::Markov | DataKind::Retrieval | DataKind::Passkey
    );
    if generated && d.path.is_some() {
        problems.push(format!(
            "data.path is set but data.kind = {:?} generates its data; use --data-kind tokens \
             or text to read the file",
            d.kind
        ));
    }
    if !matches!(d.kind, DataKind::Text | DataKind::Passkey) && d.tokenizer.is_some() {
        problems.push(format!(
            "data.tokenizer is set but data.kind = {:?} does not tokenize text; use --data-kind \
             text or passkey",
            d.kind
        ));
    }
    if !generated && d.path.is_none() {
        problems.push(format!("data.kind = {:?} needs data.path", d.kind));
    }
    if d.kind == DataKind::Text && d.tokenizer.is_none() {
        problems.push(match &cfg.init_from {
            Some(init) => format!(
                "data.kind = Text needs a tokenizer, and init_from {} has no tokenizer.json: \
                 set data.tokenizer (--tokenizer)",
                init.dir.display()
            ),
            None => "data.kind = Text needs data.tokenizer (--tokenizer, a tokenizer.json)".into(),
        });
    }
    problems
}

/// Output options that cannot take effect as given.
fn output_problems(cfg: &TrainConfig) -> Vec<String> {
    let mut problems = Vec::new();
    match (&cfg.output.checkpoint_dir, cfg.output.checkpoint_every) {
        (_, Some(0)) => problems.push(
            "output.checkpoint_every = 0: give the number of steps between checkpoints (≥ 1)"
                .into(),
        ),
        (None, Some(every)) => problems.push(format!(
            "output.checkpoint_every = {every} without output.checkpoint_dir: nothing would be \
             written; add --checkpoint-dir DIR"
        )),
        _ => {}
    }
    problems
}

/// `init_from`'s checkpoint must give a model, and the configuration must run that model
/// (`init::resolved`, which `seqpipe train` and the training entry points apply).
fn init_problem(cfg: &TrainConfig) -> Option<String> {
    let init = cfg.init_from.as_ref()?;
    match init.model() {
        Err(e) => Some(e.to_string()),
        Ok(model) if model != cfg.model => Some(format!(
            "init_from {}: the configuration's model is not the checkpoint's; resolve it with \
             seqpipe_trainer::init::resolved",
            init.dir.display()
        )),
        Ok(_) => None,
    }
}
