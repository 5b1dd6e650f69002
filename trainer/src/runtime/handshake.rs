//! The run-start handshake of a multi-process run: before step 0 every rank compares its whole
//! configuration with rank 0's, and all ranks learn together which ranks disagree, so a rank
//! started with another vocabulary, data kind, weight decay or step count stops every rank with a
//! message naming it and the settings, instead of training "successfully" on its own terms.

use crate::error::{fail, Result};
use seqpipe_comm::{Group, Message, Transport};

use crate::config::{json_differences, TrainConfig};

/// What must agree: everything but the output paths that only rank 0 uses. The checkpoint
/// cadence stays in (checkpoints are collective), and so does whether the run resumes.
fn comparable(cfg: &TrainConfig, resuming: bool) -> serde_json::Value {
    let mut c = cfg.clone();
    c.output.metrics = None;
    c.output.checkpoint_dir = None;
    let mut v = serde_json::to_value(c).unwrap_or_default();
    v["resuming"] = serde_json::Value::Bool(resuming);
    v
}

/// Agrees on the configuration over `world`; an error on every rank when any rank disagrees.
pub fn agree_on_configuration(
    cfg: &TrainConfig,
    resuming: bool,
    transport: &mut dyn Transport,
    world: &mut Group,
) -> Result<()> {
    let mine = comparable(cfg, resuming);
    let bytes = serde_json::to_vec(&mine)?;
    let rank = transport.rank();
    let root = (rank == 0)
        .then(|| Message::from_u8(vec![bytes.len()], bytes.clone()))
        .transpose()?;
    let from_root = transport.broadcast(world, 0, root)?;
    let theirs: serde_json::Value = serde_json::from_slice(from_root.as_u8()?)?;
    let differences = json_differences(&theirs, &mine, ("on rank 0", "here"));
    // Every rank learns every rank's verdict, so all stop together and name the same ranks.
    let mut flags = vec![0.0f64; transport.world_size()];
    flags[rank] = if differences.is_empty() { 0.0 } else { 1.0 };
    let n = flags.len();
    let all = transport.all_reduce_sum(world, Message::from_f64(vec![n], flags)?)?;
    let disagreeing: Vec<usize> = all
        .as_f64()?
        .iter()
        .enumerate()
        .filter(|(_, &f)| f != 0.0)
        .map(|(r, _)| r)
        .collect();
    if disagreeing.is_empty() {
        return Ok(());
    }
    let detail = if differences.is_empty() {
        String::new()
    } else {
        format!(
            "; this rank ({rank}) differs in:\n  {}",
            differences.join("\n  ")
        )
    };
    fail!(
        Config,
        "rank(s) {disagreeing:?} were started with another configuration than rank 0; every \
         rank must run the same settings{detail}"
    )
}
