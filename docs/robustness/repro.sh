#!/usr/bin/env bash
# Reproductions of the faults issue 23 reported, one line each: `repro.sh BINARY` prints the
# exit code and a verdict per case (BAD = the reported fault still happens). Run it against an
# old and a new build to see the difference; the trainer's tests hold the same cases for CI.
set -u
bin=${1:?usage: repro.sh path/to/seqpipe}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
T="train --steps 2 --seq-len 32 --stages 2 --schedule 1f1b --chunks 1 --slices 1"
row() { printf '%-62s exit %-4s %s\n' "$1" "$2" "$3"; }

mkdir exp && echo keep > exp/notes.txt
$bin $T --checkpoint-dir exp >/dev/null 2>&1; rc=$?
[ -f exp/notes.txt ] && v=ok || v="BAD: notes.txt deleted"; row "--checkpoint-dir on a user's directory" $rc "$v"

mkdir run.old && echo keep > run.old/keep.txt
$bin $T --checkpoint-dir run.v2 >/dev/null 2>&1; $bin $T --checkpoint-dir run.v2 >/dev/null 2>&1; rc=$?
[ -f run.old/keep.txt ] && v=ok || v="BAD: sibling run.old deleted"; row "--checkpoint-dir run.v2 beside run.old" $rc "$v"

printf 'steps = 1\n[model]\nlayers = 4\n' > partial.toml
$bin train --config partial.toml --seq-len 32 --stages 2 --schedule 1f1b --chunks 1 --slices 1 >/dev/null 2>&1; rc=$?
[ $rc = 0 ] && v=ok || v="BAD: partial [model] refused"; row "partial [model] section in TOML" $rc "$v"

$bin plan --model llama-7b --seq 32k --gpus 16 2>/dev/null | head -1 >/dev/null; rc=${PIPESTATUS[0]}
[ "$rc" != 101 ] && v=ok || v="BAD: panic"; row "plan | head -1" $rc "$v"
$bin plan --model llama-7b --seq 32k --gpus 16 > /dev/full 2>/dev/null; rc=$?
[ $rc = 1 ] && v=ok || v="BAD: not a clean error"; row "plan > /dev/full" $rc "$v"

$bin plan --model llama-7b --seq 8k --gpus 1 >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: exit 0 with nothing searched"; row "plan --gpus 1" $rc "$v"

$bin plan --model llama-7b --seq 8k --gpus 8 --global-batch 18446744073709551615 >/dev/null 2>&1; rc=$?
[ $rc = 1 ] && v=ok || v="BAD"; row "plan --global-batch 2^64-1" $rc "$v"

$bin slice --model llama-7b --seq 4096 --pad >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: --pad ignored"; row "slice --pad with balanced slicing" $rc "$v"

$bin $T --checkpoint-every 1 >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: ignored"; row "--checkpoint-every without --checkpoint-dir" $rc "$v"

WORLD_SIZE=abc $bin $T >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: trained alone"; row "WORLD_SIZE=abc" $rc "$v"

printf '[optim]\nlr = 1000.0\nweight_decay = 0.0\nwarmup_steps = 0\n' > hot.toml
$bin train --config hot.toml --steps 30 --seq-len 32 --stages 2 --schedule 1f1b --chunks 1 --slices 1 >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: diverged run exits 0"; row "lr 1000 (diverges)" $rc "$v"

python3 -c "import struct,sys; sys.stdout.buffer.write(b''.join(struct.pack('<I', 1 + i % 200) for i in range(4096)))" > u32.bin
$bin $T --data-kind tokens --data-path u32.bin >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: trained on interleaved zeros"; row "u32 token file read as u16" $rc "$v"

python3 -c "
import json
print(json.dumps({'architectures': ['LlamaForCausalLM'], 'vocab_size': 18446744073709551615, 'hidden_size': 64,
 'intermediate_size': 128, 'num_attention_heads': 4, 'num_hidden_layers': 2}))" > huge.json
$bin plan --model huge.json --seq 8k --gpus 8 >/dev/null 2>&1; rc=$?
[ $rc = 1 ] && v=ok || v="BAD"; row "config.json with vocab 2^64-1" $rc "$v"

python3 -c "
import json
print(json.dumps({'architectures': ['LlamaForCausalLM'], 'vocab_size': 256, 'hidden_size': 64,
 'intermediate_size': 128, 'num_attention_heads': 3, 'num_hidden_layers': 2}))" > odd.json
$bin slice --model odd.json --seq 4096 >/dev/null 2>&1; rc=$?
[ $rc != 0 ] && v=ok || v="BAD: head_dim 21"; row "config.json hidden 64 over 3 heads" $rc "$v"

timeout 60 $bin plan --model llama-7b --lengths dist:lognormal:mu=8.5,sigma=1.4 --sequences 200 --context 96k >/dev/null 2>&1; rc=$?
[ $rc = 0 ] && v=ok || v="BAD: still running after 60 s"; row "plan --lengths … --sequences 200" $rc "$v"
