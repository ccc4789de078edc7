# Source on a GPU machine from the repo root: installs the carried wheels (.whl/, see
# ../shared/device/fetch_wheels.sh) into /tmp/site and puts them and every package's src/ on
# PYTHONPATH, so `python3 -m titan_train` and the benchmarks run from this checkout.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$(ls -d "$PWD"/packages/*/src | paste -sd:) PYTHONUNBUFFERED=1
export TIKTOKEN_CACHE_DIR="" TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"
