"""hf_finetune: the library under the entry points of ``steps/``, one module per concern.

- settings and profiles: ``settings`` (the shared settings, declared once), ``config`` (``Config``:
  the shared settings and every task's own), ``profiles`` (``profiles/*.yaml`` and the merge),
  ``mlproject`` (writes both ``MLproject`` files from the declarations);
- the command line: ``cli`` (flags, one-line errors, exit codes), ``logs`` (``<step>: <message>``);
- a step's run: ``tracking`` (its MLflow run, its upstream, the process that holds it),
  ``cache`` (main's cache key), ``reuse`` (cached and resumable runs), ``driver`` (how ``main``
  starts a step), ``summary`` (what a reader of a ``main`` run sees);
- names: ``chain`` (the steps in order, artifact paths), ``tags`` (every tag), ``errors``;
- storage: ``artifacts`` (downloads, linked logs, each step's way in to another's output),
  ``files`` (hard links), ``uris`` (registry URIs, secrets masked);
- data: ``sources`` (reading files and hub datasets), ``corpus`` (cleaning, digest, splits);
- models: ``hub`` (base models, the hub cache, references), ``devices``, ``lora``, ``training``
  (the Trainer), ``checkpoints`` (epochs, resume), ``distributed`` (DDP), ``save_modes``;
- tasks: ``tasks.base`` (what every step asks of a kind of model), ``tasks.registry`` (name ->
  task), one package per task (``tasks.text_classification``);
- the registry: ``registry.gate``, ``registry.locks``, ``registry.card``;
- batch scoring: ``scoring`` (the local engine), ``spark``, ``filesystems``;
- what people read: ``report`` (``report/pipeline.html``), ``ui`` (where to look in MLflow's UI);
- ``compat``: every patch of, and private call into, MLflow, transformers and huggingface_hub.

Nothing here runs at import time beyond defining things: no tracking URI is set, no folder made.
"""
