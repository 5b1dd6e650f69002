#!/usr/bin/env bash
# Context extension, end to end and measured: start from the tiny `transformers` fixture model
# (trainer/tests/fixtures/hf/llama), teach it the passkey task at 128 tokens, probe it at 128 to
# 1024 tokens, extend it to 1024 with a RoPE change, probe it again. Writes only under the work
# directory it is given, which must not exist yet; prints both tables and draws both heat maps.
#   docs/examples/passkey/extend.sh /tmp/extension
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="${1:?usage: extend.sh <new work directory>}"
if [ -e "$work" ]; then
    echo "extend.sh: $work exists; give a new directory (nothing is written into one that exists)" >&2
    exit 2
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin seqpipe
seqpipe="$root/target/release/seqpipe"
mkdir -p "$work"
cd "$work"
export RAYON_NUM_THREADS=1
probe() {
    "$seqpipe" eval --model "$1" --lengths 127,255,511,1023 --sequences 2 --data-kind passkey \
        --passkey-depths 0,0.25,0.5,0.75,1 --passkey-trials 10 --heatmap "$2"
}
teach() { # init-from, run directory, sequence length, steps, learning rate
    "$seqpipe" train --config "$here/teach.toml" --init-from "$1" --checkpoint-dir "$2" \
        --seq-len "$3" --steps "$4" --lr "$5" --metrics "$2.jsonl" | tail -n 8
}
teach "$root/trainer/tests/fixtures/hf/llama" short 31 300 0.01
"$seqpipe" export --from short --hf short-hf
teach short-hf base 127 200 0.003
"$seqpipe" export --from base --hf base-hf
echo "== before: trained at 128 tokens =="
probe base-hf before.svg
"$seqpipe" train --config "$here/extend.toml" --init-from base-hf --checkpoint-dir extended \
    --metrics extended.jsonl | tail -n 8
"$seqpipe" export --from extended --hf extended-hf
echo "== after: linear RoPE scaling x8, 100 steps at 1024 tokens =="
probe extended-hf after.svg
