"""The work behind the napari docks, without Qt: what runs in their worker threads.

- `finetune`: `TrainingJob` (a run prepared from copies of the layers' data by `annotated_planes`, `run_config`
  and `training_job`), `run_training` (the generator a Fine-tune worker drives) and `measure_steps` (the seconds
  per step shown before a run);
- `segment`: `stream_tiles` (tile-by-tile prediction of a stack of planes with a preview labelling of each tile)
  and `postprocess_planes` (the whole-image post-processing once every tile is in);
- `augment_preview`: `preview_sample`, the training window `augment` would make, with a grid warped alike.

A dock turns layers into these arrays on the main thread, starts a job in a worker and applies what it yields
or returns to layers; the jobs are tested with plain pytest, no viewer.
"""
