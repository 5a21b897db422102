"""What the training stages share, so that each stage is a script of calls.

* :mod:`~pipeline.training.order`: which rows, and which random draws, a micro-batch gets;
  all from ``(seed, index)`` alone, so that a resumed run draws what an unbroken one would.
* :mod:`~pipeline.training.vae`: the autoencoder's step (L1 plus a small KL term, as SD's
  autoencoder without its GAN loss), its crops and its reconstruction error in dB.
* :mod:`~pipeline.training.latents`: the training split encoded once, and the latent scaling.
* :mod:`~pipeline.training.rows`: rows too many for memory (posteriors, audio, log-mels) in a
  temporary file, read a batch at a time.
* :mod:`~pipeline.training.ema`: the exponential moving average sampled from.
* :mod:`~pipeline.training.resume`: one resumable run (fingerprint, checkpoint cadence and
  pruning, the non-finite loss guard, the checkpoint resumed from).
* :mod:`~pipeline.training.unet`: the diffusion fine-tuning's parts (base, VAE adaptation,
  optimiser state, one step under accelerate) that ``train`` calls in order.
"""
