"""specldm: a DVC pipeline that fine-tunes an image latent diffusion model on mel spectrograms.

The package is split by role, so that the shape of the system shows in its folders.
``stages/`` holds one module per DVC stage, named as in ``dvc.yaml`` (``python -m
pipeline.stages.render`` is the ``render`` stage): each reads ``params.yaml`` and wires
library parts together; no stage imports another, and the paths they share are in
``paths.py``. ``sources/`` is where clips come from (synthetic, AudioSet through yt-dlp and
its worker processes or cluster tasks, local recordings), the clip shards and the manifest
all of them write, and the balanced subset of it (targets, splits, captions, mixtures). ``audio/`` owns
every audio constant and conversion (``SpectrogramSpec``: waveform, log-mel, image), the
Parquet shards that carry them (their reader, and their writer beside it) and the waveforms
behind each shard row. ``models/`` holds the
diffusion model's parts, generation and the sets ``sample`` draws, the vocoders, the evaluator
network and checkpoints.
``training/`` what the training stages share: data order, the VAE step, the latent cache,
the EMA and one resumable run (fingerprint, checkpoint cadence, the non-finite loss guard).
``evaluation/`` scores: the frozen feature extractors (Inception-v3, the aisfx sound
embedding), distances and bootstrap intervals, the frozen judge, the real clips' features
(``models/judge``), every tracked score, the table and ``specldm compare``. Beside them:
``config/`` (``params.yaml`` section by section: each stage validates only what it reads),
``params.py`` (all sections together, for the CLI and tests), ``errors.py`` (errors a user can act on),
``provenance.py`` (which code each stage runs), ``engine.py`` (where ``acquire`` and
``render`` run their partitions: here, or on a Dask cluster), ``files.py`` (atomic writes), ``ontology.py``
(AudioSet's classes), ``cli.py`` (the ``specldm`` command). A new stage
goes in ``stages/``, a new source in ``sources/``, a new network in ``models/``, a training
helper in ``training/``, a new score in ``evaluation/``.
"""
