"""params.yaml, section by section, so that each stage runs only its own sections' validation.

``core`` reads the file and checks types; each other module holds the sections one part of
the pipeline reads (``source``: source and download; ``engine``; ``spectrogram``: spectrogram and render;
then ``subset``, ``model`` (model and pretrain), ``train``, ``evaluator``, ``vocoder``, ``sample``,
``evaluate``). A stage loads the sections it reads with :func:`pipeline.config.core.load_sections`,
so its code closure (and so DVC's deps) holds their validation and no other: an edit to how
``train.*`` is checked reruns ``train`` and what follows it, not ``acquire``.
:mod:`pipeline.params` assembles every section into ``Params`` for the ``specldm`` command,
profiles and tests.
"""
