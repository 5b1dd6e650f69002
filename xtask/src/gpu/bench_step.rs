//! `bench gpu`, part 4: one sliced training step of a 1.1B Llama on one GPU (two stage threads,
//! SlimPipe), with device memory measured independently of the runtime's bookkeeping: a thread
//! samples the driver's used-memory figure (`cuMemGetInfo`) every millisecond through the step,
//! and the peak is set beside the planner's prediction of saved activations plus model and
//! optimizer state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device};
use seqpipe_trainer::config::{SlicingMethod, TrainConfig};
use seqpipe_trainer::data::MarkovSource;
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::predict::{predicted_peaks, stage_states, PredictInput};
use seqpipe_trainer::runtime::{IterationInput, Pipeline, Weights};
use seqpipe_trainer::train::{schedule_config, slice_ranges};

/// The 1.1B Llama (TinyLlama's shape: hidden 2048, 22 → 16 layers here, GQA 32/4 → 16/8).
pub fn llama_1b(base: ModelConfig) -> ModelConfig {
    ModelConfig {
        hidden: 2048,
        ffn_hidden: 5632,
        heads: 16,
        kv_heads: 8,
        layers: 16,
        ..base
    }
}

/// What one measured training step gives.
pub struct StepFigures {
    /// Median seconds per step.
    pub seconds: f64,
    /// The runtime's own peak saved-activation bytes per stage.
    pub saved_measured: Vec<usize>,
    /// The planner's (memory ledger's) predicted peak saved-activation bytes per stage.
    pub saved_predicted: Option<Vec<f64>>,
    /// Parameters, f32 gradients and f32 AdamW moments of both stages, bytes.
    pub state_bytes: usize,
    /// Device memory in use before the pipeline existed (CUDA context, the earlier benches'
    /// pool), and the peak sampled during the steps, bytes.
    pub used_before: usize,
    /// Peak device memory in use during the steps.
    pub used_peak: usize,
}

/// Samples device memory in use until dropped; `peak()` is the largest sample.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    fn start(gpu: &Device) -> Result<MemorySampler> {
        let Device::Cuda(dev) = gpu else {
            anyhow::bail!("the memory sampler needs a CUDA device");
        };
        let ctx = dev.cuda_stream().context().clone();
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok((free, total)) = ctx.mem_get_info() {
                    p.fetch_max(total - free, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Ok(MemorySampler {
            stop,
            peak,
            thread: Some(thread),
        })
    }

    /// Stops sampling and returns the peak.
    fn peak(mut self) -> usize {
        self.finish();
        self.peak.load(Ordering::Relaxed)
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A sampler that panicked only loses samples; the step's own result stands.
            let _ = t.join();
        }
    }
}

impl Drop for MemorySampler {
    // An error mid-step must not leave the sampling thread running.
    fn drop(&mut self) {
        self.finish();
    }
}

fn used_now(gpu: &Device) -> Result<usize> {
    let Device::Cuda(dev) = gpu else {
        anyhow::bail!("needs a CUDA device");
    };
    let (free, total) = dev.cuda_stream().context().mem_get_info()?;
    Ok(total - free)
}

fn config(model: ModelConfig, seq: usize, slices: u32) -> TrainConfig {
    let mut cfg = TrainConfig {
        model,
        ..TrainConfig::default()
    };
    cfg.data.seq_len = seq;
    cfg.data.batch = 1;
    cfg.parallel.schedule = "slimpipe".into();
    cfg.parallel.stages = 2;
    cfg.parallel.chunks = 2;
    cfg.parallel.microbatches = 2;
    cfg.parallel.slices = slices;
    cfg.parallel.slicing = SlicingMethod::Uniform;
    cfg
}

/// Times `reps` steps (after one warm-up) of the 1.1B model at `seq` tokens in `slices` slices.
pub fn training_step(
    gpu: &Device,
    model: ModelConfig,
    seq: usize,
    slices: u32,
    reps: usize,
) -> Result<StepFigures> {
    let cfg = config(model, seq, slices);
    let m = cfg.parallel.microbatches as usize;
    let slice_list = slice_ranges(&cfg)?;
    let input = IterationInput {
        ragged: None,
        documents: None,
        tokens: MarkovSource::new(cfg.model.vocab, 1).batch(m, 1, seq, &Device::Cpu)?,
        masks: None,
        slices: slice_list.clone(),
        normaliser: (m * seq) as f64,
    };
    gpu.synchronize()?;
    let used_before = used_now(gpu)?;
    let sampler = MemorySampler::start(gpu)?;
    let mut pl = Pipeline::on_device(
        &cfg.model,
        schedule_config(&cfg)?,
        None,
        &OptimConfig::default(),
        Weights::Seed(1),
        DType::BF16,
        Duration::from_secs(600),
        gpu,
    )?;
    // Both stages live on this GPU: bf16 parameters, f32 gradients, f32 master weights and two
    // f32 AdamW moments per stage (`predict::stage_states`).
    let states = stage_states(
        &cfg.model,
        DType::BF16,
        cfg.parallel.stages,
        cfg.parallel.chunks,
    )?
    .expect("bf16 has model states");
    let state_bytes = states.iter().sum::<f64>() as usize;
    let saved_predicted = predicted_peaks(&PredictInput {
        ragged: None,
        model: &cfg.model,
        dtype: DType::BF16,
        batch: 1,
        slices: &slice_list,
        schedule: &pl.schedule,
        partition: &pl.partition,
        recompute: pl.recompute(),
    })?;
    let mut saved_measured = Vec::new();
    let mut times = Vec::new();
    for i in 0..reps + 1 {
        gpu.synchronize()?;
        let start = std::time::Instant::now();
        let report = pl.step(&input, 1e-4)?;
        gpu.synchronize()?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
        saved_measured = report.stages.iter().map(|r| r.peak_saved_bytes).collect();
    }
    let used_peak = sampler.peak();
    times.sort_by(f64::total_cmp);
    Ok(StepFigures {
        seconds: times[times.len() / 2],
        saved_measured,
        saved_predicted,
        state_bytes,
        used_before,
        used_peak,
    })
}
