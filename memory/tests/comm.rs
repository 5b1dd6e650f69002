//! The planner's communication model: each kind's cost moves the way its traffic does.

use seqpipe_memory::comm::{ring_time, step_comm, Interconnect};
use seqpipe_memory::SearchSpace;
use seqpipe_memory::{gpu_preset, search, Candidate, Parallelism, PipelineKind, RecomputePolicy};
use seqpipe_slicing::preset;

fn candidate(tp: u64, cp: u64, dp: u64, kind: PipelineKind) -> Candidate {
    Candidate {
        kind,
        stages: 4,
        parallel: Parallelism::new(tp, cp, dp).unwrap(),
        microbatches: 8,
        recompute: RecomputePolicy::None,
        offload_fraction: 0.0,
    }
}

const RATE: f64 = 0.5 * 989e12;

#[test]
fn tensor_parallel_traffic_grows_with_t_and_crosses_nodes_beyond_eight() {
    let shape = preset("llama-70b").unwrap();
    let net = Interconnect::DGX_H100;
    let tp = |t| {
        step_comm(
            &shape,
            32768,
            &candidate(t, 1, 1, PipelineKind::OneF1B),
            &net,
            RATE,
            10.0,
        )
        .tp
    };
    assert_eq!(tp(1), 0.0);
    assert!(
        tp(2) < tp(4) && tp(4) < tp(8),
        "{} {} {}",
        tp(2),
        tp(4),
        tp(8)
    );
    // 16 ranks span two nodes: the network, 9× slower than NVLink here.
    assert!(tp(16) > 5.0 * tp(8));
    // Full recomputation repeats the forward's collectives: 3 passes instead of 2.
    let mut full = candidate(8, 1, 1, PipelineKind::OneF1B);
    full.recompute = RecomputePolicy::Full;
    let full = step_comm(&shape, 32768, &full, &net, RATE, 10.0).tp;
    assert!((full / tp(8) - 1.5).abs() < 1e-9);
    // Slicing moves the same bytes in more messages: only latency is added.
    let sliced = candidate(8, 1, 1, PipelineKind::Seq1F1B { slices: 8 });
    let sliced = step_comm(&shape, 32768, &sliced, &net, RATE, 10.0).tp;
    // 20 layers per stage × 8 micro-batches × 2 passes × 4 collectives × 7 more messages, each
    // with 7 ring hops of latency.
    let added = 20.0 * 8.0 * 2.0 * 4.0 * 7.0 * 7.0 * net.latency_s;
    assert!(
        (sliced - tp(8) - added).abs() < 1e-9,
        "{sliced} - {} != {added}",
        tp(8)
    );
}

#[test]
fn context_parallel_hides_behind_long_attention_only() {
    let shape = preset("llama-7b").unwrap();
    let net = Interconnect::DGX_A100;
    let cp = |seq| {
        step_comm(
            &shape,
            seq,
            &candidate(1, 8, 1, PipelineKind::OneF1B),
            &net,
            RATE,
            10.0,
        )
        .cp
    };
    assert!(cp(2048) > 0.0, "short attention cannot hide the ring");
    assert_eq!(cp(512 * 1024), 0.0, "long attention hides it");
}

#[test]
fn data_parallel_sync_is_exposed_only_beyond_a_micro_batch() {
    let shape = preset("llama-7b").unwrap();
    let net = Interconnect::DGX_H100;
    let c = candidate(1, 1, 64, PipelineKind::OneF1B);
    let long = step_comm(&shape, 4096, &c, &net, RATE, 100.0).dp;
    let short = step_comm(&shape, 4096, &c, &net, RATE, 0.01).dp;
    assert_eq!(long, 0.0);
    let sync = {
        let params = shape.parameters() as f64 / 4.0;
        ring_time(&net, params * 4.0, 64, 1) + ring_time(&net, params * 2.0, 64, 1)
    };
    assert!(
        (short - (sync - 0.01 / 8.0)).abs() < 1e-9,
        "{short} vs {sync}"
    );
}

#[test]
fn the_search_charges_tensor_parallelism_its_traffic() {
    let h100 = gpu_preset("h100").unwrap();
    let space = SearchSpace {
        shape: preset("llama-70b").unwrap(),
        seq_len: 32 * 1024,
        gpus: 64,
        global_batch: 64,
        gpu: h100,
        budget_bytes: h100.memory_bytes,
        efficiency: 0.5.into(),
        max_tp: 8,
        max_cp: 1,
        min_stages: 2,
    };
    let evals = search(&space).unwrap();
    let best = |t: u64| {
        evals
            .iter()
            .filter(|e| e.fits() && e.candidate.parallel.tp == t)
            .map(|e| e.mfu)
            .fold(0.0, f64::max)
    };
    assert!(best(1) > best(2) && best(2) > best(4) && best(4) > best(8));
    let tp8 = evals
        .iter()
        .find(|e| e.fits() && e.candidate.parallel.tp == 8)
        .unwrap();
    assert!(tp8.comm.tp > 0.0 && tp8.comm.total() < tp8.step_time);
}
