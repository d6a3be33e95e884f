#!/usr/bin/env bash
# Fetches the default data sets of rlhf.cpp from where they are published, for a machine
# that has no data folder beside the clone. Each file is checked against its SHA-256 (the
# one pinned for that published file) before it is kept; a file already present with the
# right checksum is left alone, so the script is safe to rerun.
#   scripts/get_data.sh [DIR]      DIR: the data folder (default: $RLHF_DATA, else ../shared/data)
# Then run with RLHF_DATA=DIR (configs and tests find the files through it).
# Needs curl (or wget) and a network that reaches the hosts below.
set -euo pipefail
dir="${1:-${RLHF_DATA:-../shared/data}}"

HF=https://huggingface.co
GH=https://raw.githubusercontent.com
# folder/file  sha256  url
files=(
  "stories260K/stories260K.gguf 270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d $HF/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf"
  "stories260K/stories260K.bin b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696 $HF/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin"
  "stories260K/tok512.bin 037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312 $HF/karpathy/tinyllamas/resolve/main/stories260K/tok512.bin"
  "gpt2-bpe/encoder.json 196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783 https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"
  "gpt2-bpe/vocab.bpe 1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5 https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
  "hh-rlhf-harmless-base-test/test.jsonl.gz ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03 $GH/anthropics/hh-rlhf/354e5c3cb8960630860dd5774a6ac2a58313bf4d/harmless-base/test.jsonl.gz"
  "xstest/xstest_prompts.csv 11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a $GH/paul-rottger/exaggerated-safety/475f10bf0a3d6a9dfb174b6de1a38afbfdff98a5/xstest_prompts.csv"
  "advbench/harmful_behaviors.csv 5c9d87515c4d431c3614f25a0af7a462eabdfa6035aa35d746e64159823836e3 $GH/ab235/AttnGCG-attack/6d9f1a4752760bf9dec98fddf111075e194eb71e/data/advbench/harmful_behaviors.csv"
  "tinyshakespeare/input.txt 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed $GH/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
  "tinystories-sample/tinystories_sample.txt defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43 $GH/stanford-cs336/assignment1-basics/360bfd48b3cfddd80266938459261ef86dbc1aeb/tests/fixtures/tinystories_sample.txt"
)

fetch() {  # url out
  if command -v curl >/dev/null; then curl -fsSL --retry 3 -o "$2" "$1"; else wget -q -O "$2" "$1"; fi
}

failed=0
for entry in "${files[@]}"; do
  read -r rel sum url <<<"$entry"
  out="$dir/$rel"
  if [ -f "$out" ] && echo "$sum  $out" | sha256sum -c --status; then
    echo "ok       $rel"
    continue
  fi
  mkdir -p "$(dirname "$out")"
  tmp="$out.part"
  if fetch "$url" "$tmp" && echo "$sum  $tmp" | sha256sum -c --status; then
    mv "$tmp" "$out"
    echo "fetched  $rel"
  else
    rm -f "$tmp"
    echo "FAILED   $rel  ($url: unreachable or checksum mismatch)" >&2
    failed=1
  fi
done
# The reference outputs of the original llama2.c (stories260K/expected_*) that some tests
# compare against are produced by running llama2.c's run.c on the files above; they are not
# published as files, so the tests that need them report them missing.
if [ $failed -ne 0 ]; then
  echo "some files could not be fetched; see README.md (Data) for where each is published" >&2
  exit 1
fi
echo "data in $dir; run with RLHF_DATA=$(cd "$dir" && pwd)"
