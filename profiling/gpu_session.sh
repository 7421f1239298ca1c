#!/usr/bin/env bash
# The curated GPU runs behind profiling/results and the README, in phases that each fit one call of
# the lent machine (<= 10 minutes). Usage on that machine, after the GGUF parts are staged:
#   SAMGPU_GIT_SHA=<sha> bash profiling/gpu_session.sh PHASE
# Logs and results go to $OUT (or profiling/results/tmp when OUT is unset).
set -uo pipefail
source profiling/gpu_stage.sh >/dev/null 2>&1 || { echo "staging failed"; exit 1; }
set +e  # gpu_stage.sh sets -e; a timed-out step must not end the phase
OUT=${OUT:-profiling/results/tmp}; mkdir -p "$OUT"
STAMP=$(mktemp); touch "$STAMP"  # results files this phase writes are the ones newer than this
SELF=samgpu/data/corpus/smollm2_self_responses.jsonl.gz
IDX_SELF=/root/idx-self.samidx
run() {  # run NAME SECONDS CMD...: log to $OUT/NAME.log, print the tail
  local name=$1 secs=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"
  grep -v -E "Converting|Loading weights|Writing model|it/s\]" "$OUT/$name.log" | tail -n 22
}
case "${1:-}" in
  corpus)  # the model's own responses for the static corpus, then the index with them
    run self_corpus 260 python -m profiling.self_corpus --out "$OUT/smollm2_self_responses.jsonl.gz" \
      --batch-size 64 --seconds 200
    cp "$OUT/smollm2_self_responses.jsonl.gz" "$SELF"
    run index_self 120 samgpu index build --corpus samgpu/data/corpus/*.json*.gz --out "$IDX_SELF"
    run runtime 200 python -m profiling.bench_runtime --model-path "$SAMGPU_DEFAULT_GGUF" --batch 1 32
    ;;
  specbench)  # all methods, B=1, with and without the model's own responses in the corpus
    [ -f "$IDX_SELF" ] || { echo "run the corpus phase first"; exit 1; }
    run e2e_spec 400 python -m profiling.bench_e2e --dataset spec_bench --limit 180 --hf-limit 4 --index "$IDX_SELF" --tag self
    run e2e_spec_noself 140 python -m profiling.bench_e2e --dataset spec_bench --limit 180 --methods ar,sam+tr,merged --tag noself
    ;;
  batch)  # speedup vs batch size, HumanEval, HAGRID
    for b in 4 16 64; do
      run "e2e_b$b" 150 python -m profiling.bench_e2e --dataset spec_bench --limit 384 --batch-size $b \
        --methods ar,sam+tr,merged
    done
    run e2e_humaneval 120 python -m profiling.bench_e2e --dataset humaneval --limit 80 --methods ar,pld,tr,sam,sam+tr,merged
    ;;
  batch2)  # the batch curve again after re-deriving the tree budgets from the verify cost
    for b in 16 32 64; do
      run "e2e_b$b" 150 python -m profiling.bench_e2e --dataset spec_bench --limit 384 --batch-size $b \
        --methods ar,sam+tr,merged --tag budgets-v2
    done
    ;;
  full)  # all 480 Spec-Bench questions (both MT-Bench turns) for the headline methods
    run e2e_spec_full 420 python -m profiling.bench_e2e --dataset spec_bench --methods ar,sam+tr,merged \
      --tag full480
    ;;
  ablation)  # the paper's ablations on sam+tr, fp32 losslessness, HAGRID
    for kv in l_bias=5 l_bias=0 l_bias=2 l_bias=8 l_threshold=0 l_threshold=2 l_threshold=8 n_predicts=10 \
              n_predicts=20 n_predicts=60 use_static=false use_dynamic=false; do
      run "abl_$kv" 45 python -m profiling.bench_e2e --dataset spec_bench --limit 60 --methods sam+tr --option "$kv" \
        --tag "ablation:$kv"
    done
    run e2e_fp32 150 python -m profiling.bench_e2e --dataset spec_bench --limit 30 --max-new-tokens 128 --dtype float32 \
      --methods ar,pld,tr,sam,sam+tr,sam-tree,merged --tag fp32
    run e2e_hagrid 100 python -m profiling.bench_e2e --dataset hagrid --limit 60 --methods ar,sam+tr,merged
    ;;
  multigpu)  # on nvidia-h100-x2: `samgpu generate` on 1 GPU vs torchrun on 2, all 480 first turns
    run multigpu_b64 560 python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr,merged \
      --batch-size 64 --tag multigpu
    ;;
  multigpu2)  # B=16 per GPU; then float32 on fewer prompts: the files must equal ar's and 1 GPU's
    run multigpu_b16 360 python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr,merged \
      --batch-size 16 --tag multigpu
    run multigpu_fp32 200 python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr,merged \
      --dtype float32 --limit 96 --batch-size 16 --max-new-tokens 128 --passes 1 --tag multigpu-fp32
    ;;
  multigpu3)  # after per-rank busy times and lazy progress tokens: where the 2-GPU time goes
    run multigpu_b64 300 python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr \
      --batch-size 64 --tag multigpu-busy
    run multigpu_b16 200 python -m profiling.bench_multigpu --gpus 1 2 --methods ar \
      --batch-size 16 --tag multigpu-busy
    ;;
  continuous)  # --continuous-batching, 1 vs 2 GPUs (compare with the multigpu phase's plain runs)
    run continuous_b64 560 python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr,merged \
      --batch-size 64 --continuous-batching --tag continuous
    ;;
  continuous_e2e)  # the batch curve with continuous batching (all 480 first and second turns)
    for b in 16 64; do
      run "e2e_cont_b$b" 250 python -m profiling.bench_e2e --dataset spec_bench --batch-size $b \
        --methods ar,sam+tr,merged --continuous-batching --tag continuous
    done
    ;;
  kernels)  # third session: every kernel test on the real compiler, then the attention sweep
    run kernel_tests 300 python -m pytest -q -x -p no:cacheprovider tests/kernels \
      tests/decoding/test_loop_cuda.py tests/decoding/test_runner_gpu.py tests/test_no_sync.py
    run attention 280 python -m profiling.bench_attention
    ;;
  serve)  # third session: batched generation through the CLI, mixed prompts, the batch curve
    run serve 540 python -m profiling.bench_serve --batch-sizes 1 16 64 256 \
      --methods ar,sam+tr,merged --modes static,continuous --passes 1 --tag serve-v1
    ;;
  runtime7b)  # the random Llama-2-7B-shape verify step t(B, N)
    run runtime7b 200 python -m profiling.bench_runtime --sections verify --batch 1 16 64
    ;;
  tune)  # kernel tests of the attention kernels, then the graph-timed decode-attention sweep; the
          # tuning file is kept outside the checkout (/root) for the next call on this machine
    run attention_tests 200 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_tree_attention.py \
      tests/kernels/test_prefill_attention.py tests/decoding/test_loop_cuda.py tests/test_no_sync.py
    run tune 300 python -m profiling.bench_attention --sections tree --heads smollm2 \
      --batches 16 64 256 --write-tuning --rep-ms 10
    cp kernels/tuned/tree_attention.json /root/tree_attention.json; cp kernels/tuned/tree_attention.json "$OUT"/
    ;;
  serve2)  # the batch curve with the tuned attention, then exact mode (bf16 == ar, ar across B)
    [ -f /root/tree_attention.json ] && cp /root/tree_attention.json kernels/tuned/tree_attention.json
    run serve 330 python -m profiling.bench_serve --batch-sizes 1 16 64 256 \
      --methods ar,sam+tr,merged --modes static,continuous --passes 1 --tag serve-v2
    run exact 220 python -m profiling.bench_serve --batch-sizes 1 16 64 --methods ar,sam+tr,merged \
      --modes continuous --exact --limit 96 --min-requests 96 --max-new-tokens 128 --passes 1 --tag exact
    ;;
  store)  # the cross-request store: GPU kernel tests, then the three workloads
    run store_tests 120 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_sam_store.py \
      tests/kernels/test_sam_draft_store.py tests/drafters/test_store.py
    run store 330 python -m profiling.bench_store --scale 0.3
    ;;
  verify)  # 2026-12-02: the load_rows fix (f6d3eb0) on the GPU: kernel tests on the real compiler,
           # then repeated CLI runs (before the fix ~1 `pld` B=64 run in 4-6 lost its EOS ids)
    run verify_tests 120 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_load_rows.py \
      tests/kernels/test_tree.py tests/kernels/test_commit.py tests/decoding/test_loop_cuda.py
    run repeat_pld64 260 python -m profiling.repeat_serve --method pld --batch-size 64 --runs 14
    run repeat_merged64 120 python -m profiling.repeat_serve --method merged --batch-size 64 --runs 5
    run repeat_pld256 90 python -m profiling.repeat_serve --method pld --batch-size 256 --runs 3
    ;;
  checks)  # 2026-12-02: the automaton launchers' buffer checks and test_eagle_expand on the real
           # compiler (their tests handed CPU tensors to compiled kernels until 694decc)
    run check_tests 200 python -m pytest -q -p no:cacheprovider \
      tests/kernels/test_sam_dynamic_checks.py tests/kernels/test_sam_store_checks.py \
      tests/kernels/test_sam_tree_checks.py tests/kernels/test_eagle_expand_checks.py \
      tests/kernels/test_eagle_expand.py tests/kernels/test_sam_dynamic.py tests/kernels/test_sam_store.py \
      tests/kernels/test_sam_tree.py tests/kernels/test_sam_update.py tests/kernels/test_sam_draft.py \
      tests/kernels/test_sam_draft_store.py tests/drafters/test_store.py
    ;;
  compiles)  # 2026-12-02: no Triton compile after the CLI's set-up (10 methods, B 4 / 16, prompts of
             # 1-2,100 tokens, a sampled run), then the served curve's compile counts per pass
    run compile_tests 200 python -m pytest -q -p no:cacheprovider tests/decoding/test_no_compile_cuda.py \
      tests/kernels/test_load_rows.py tests/drafters/test_tr_template.py
    run compile_serve 300 python -m profiling.bench_serve --batch-sizes 16 64 --methods ar,pld,merged \
      --modes continuous --passes 2 --tag compiles
    ;;
  *) echo "phases: compiles checks verify tune serve2 kernels serve runtime7b (and older: corpus specbench batch batch2 full ablation multigpu multigpu2 multigpu3 continuous continuous_e2e)"; exit 2 ;;
esac
find profiling/results -maxdepth 1 -name '*.jsonl' -newer "$STAMP" -exec cp {} "$OUT"/ \;
(cd "$OUT" && tar czf "logs-${1}.tgz" ./*.log && rm -f ./*.log)  # at most 8 files come back
ls "$OUT"
