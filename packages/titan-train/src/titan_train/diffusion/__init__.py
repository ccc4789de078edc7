"""The diffusion task (Flux): what a rectified-flow run does differently from a language model's,
in one place. build_run picks the task once from the model spec (`spec.task`); the step loop,
checkpoints, metrics and parallel layouts are shared.

- flow: per-sample noise, timesteps and caption dropout from (seed, sample id), the loss target;
- conditioning: the frozen autoencoder and text encoders;
- task: one micro-batch's forward + loss; validation: held-out loss and sampled PNGs;
- ema: an exponential moving average of the weights; rules: config checks and the plan's numbers.
"""
