"""Named benchmark rows: titan-train arguments for each row of the GPU reference table."""

REF = ["--config", "bench_1b"]
F8 = ["--model.converters", "quantize.linear.float8", "--quantize.linear.float8.filter_fqns", "output"]

ROWS: dict[str, list[str]] = {
    # torchtitan v0.2.2 on 1x H100: 56,584 tok/s at 73.2 GiB
    "eager_b5": [*REF, "--training.local_batch_size", "5"],
    # 60,577 tok/s at 71.8 GiB
    "compile_b6": [*REF, "--training.local_batch_size", "6", "--compile.enable"],
    # 71,844 tok/s at 69.4 GiB
    "compile_float8_b8": [*REF, "--training.local_batch_size", "8", "--compile.enable", *F8],
    # 55,968 tok/s at 41.3 GiB
    "compile_sac_b6": [*REF, "--training.local_batch_size", "6", "--compile.enable",
                       "--activation_checkpoint.mode", "selective", "--activation_checkpoint.selective_ac_option", "op"],
    # 47,624 tok/s at 50.9 GiB
    "vocab128k_compile_b2": [*REF, "--training.local_batch_size", "2", "--compile.enable",
                             "--model.vocab_size", "128256"],
    # the debug model: quick smoke row
    "debug": ["--config", "llama3_debug", "--training.local_batch_size", "8"],
}
