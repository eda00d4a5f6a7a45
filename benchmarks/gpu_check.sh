#!/usr/bin/env bash
# Everything a short GPU lease should check, in one call, most valuable first, each step time-boxed:
#   1. environment (nvidia-smi, versions)                                  -> OUT/env.txt
#   2. numerics of the compiled kernels on the GPU, bf16 included          -> OUT/numerics.log
#      (tests/kernels/test_gpu_numerics.py, most valuable first: info_nce / cosine_recovery, the model's attention
#      shapes, every attention case of the interpreter suite in its dtype, then in bf16; one config per shape for
#      every autotuned kernel: SCL_KERNELS_AUTOTUNE=0)
#   3. python -m benchmarks.gpu_report: ceilings, attention vs SDPA / SDPA flash / FlexAttention / xformers,
#      info_nce, masking, the training step                                -> OUT/report.{json,md,png}, OUT/report.log
#
# Usage, from the repository root of a bare checkout on a CUDA machine (nothing installed but torch + triton):
#   bash benchmarks/gpu_check.sh OUT_DIR
# Wheels in .whl/ (e.g. xformers) are installed into /tmp/site first. Times: NUMERICS_S (default 150) and
# REPORT_S (default 330) seconds; the whole script stays under 8 minutes. REPORT_ARGS adds gpu_report options
# (e.g. "--sections ceilings,attention" for a first, shorter lease call).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
start=$(date +%s)

{ nvidia-smi; $py -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__,
'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"; } >"$out/env.txt" 2>&1
cat "$out/env.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the checkout is not installed there: kernels/ is the source root of scl_kernels, the repository root that of the rest
export PYTHONPATH=$PWD/kernels:$PWD${PYTHONPATH:+:$PYTHONPATH}

echo "== numerics on the GPU"
# NUMERICS_SHARDS pytest processes (default 4) share the GPU, each taking every n-th test in the file's order (most
# valuable first): compiling the kernels is what takes the time, on one CPU core per process; one process got
# through 23 of 41 tests in 120 s (2026-11-30). SIGINT, not SIGTERM, at the time limit: pytest then still prints
# the failures it has seen (a killed -q run printed only its dots, 2026-11-29); -rfE lists each failure with its
# reason.
shards=${NUMERICS_SHARDS:-4}
mapfile -t ids < <($py -m pytest -q --collect-only -p no:cacheprovider -o addopts="" \
    tests/kernels/test_gpu_numerics.py 2>/dev/null | grep "::")
[ "${#ids[@]}" -gt 0 ] || { ids=(tests/kernels/test_gpu_numerics.py); shards=1; }
: >"$out/numerics.log"
for ((s = 0; s < shards; s++)); do
    part=()
    for ((i = s; i < ${#ids[@]}; i += shards)); do part+=("${ids[i]}"); done
    SCL_KERNELS_AUTOTUNE=0 timeout -s INT -k 20 "${NUMERICS_S:-150}" $py -m pytest -q -rfE --tb=line \
        -p no:cacheprovider -o addopts="" "${part[@]}" >"/tmp/numerics.$s.log" 2>&1 &
done
wait
for ((s = 0; s < shards; s++)); do
    { echo "-- shard $((s + 1)) of $shards"; cat "/tmp/numerics.$s.log"; } >>"$out/numerics.log"
done
grep -E "^(FAILED|ERROR)| passed| failed| skipped" "$out/numerics.log" | tail -40
echo "numerics: ${#ids[@]} tests in $shards processes, done after $(($(date +%s) - start)) s"

echo "== gpu_report"
report_s=${REPORT_S:-330}
timeout -k 20 "$report_s" $py -m benchmarks.gpu_report --out "$out" --budget-s $((report_s - 45)) --step-reserve-s 100 \
    ${REPORT_ARGS:-} 2>&1 | tee "$out/report.log" | grep -v "^  \[" | tail -60
echo "report exit ${PIPESTATUS[0]} after $(($(date +%s) - start)) s"
