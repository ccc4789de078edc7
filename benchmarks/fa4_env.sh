# Source on a GPU machine after gpu_env.sh: puts FlashAttention-4 (flash-attn-4, quack-kernels and the
# CuTe DSL, whose CUDA 13 library is too big for one device call) on PYTHONPATH.
# Here, once (git-ignored folders): the unpacked nvidia-cutlass-dsl-libs-cu13 4.8.1 wheel, `tar c | xz -9`
# (64 MB), `split -b 32000000` into cu13.tar.xz.aa (in .fa4/) and .ab (in .fa4b/, with the wheels of
# flash-attn-4 4.0.0b36, quack-kernels 0.6.5, nvidia-cutlass-dsl 4.8.1 + -libs-base + -libs-core,
# apache-tvm-ffi 0.1.15.post2, torch-c-dlpack-ext 0.1.5). Call 1 carries .fa4 and runs
# `FA4_STAGE=1 source benchmarks/fa4_env.sh` (keeps part aa in /tmp/fa4keep of the warm machine;
# the repo copy is fresh each call); call 2, within the machine's 30 s warm window, carries .fa4b and .whl and sources this file.
if [ "${FA4_STAGE:-2}" = 1 ]; then
  mkdir -p /tmp/fa4keep && cp .fa4/cu13.tar.xz.aa /tmp/fa4keep/ && ls -la /tmp/fa4keep; return 0
fi
FA4_SITE=/tmp/fa4site
if [ ! -d $FA4_SITE/nvidia_cutlass_dsl/cu13 ]; then
  mkdir -p $FA4_SITE
  cat /tmp/fa4keep/cu13.tar.xz.aa .fa4b/cu13.tar.xz.ab | xz -d | tar x -C $FA4_SITE || return 1
  # unzipped, not pip --target: three of the wheels share the nvidia_cutlass_dsl/ folder, which
  # pip --target would not merge
  for w in .fa4b/*.whl; do python3 -m zipfile -e "$w" $FA4_SITE || return 1; done
fi
# unzipping skips the .pth that puts the DSL's packages on sys.path: add it by hand
export PYTHONPATH=$FA4_SITE:$FA4_SITE/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
python3 -c "import flash_attn.cute.interface as f, cutlass; print('FA4', f.__file__)"
