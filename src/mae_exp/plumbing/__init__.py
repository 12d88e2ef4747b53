"""What every stage stands on: params, the stage runner, checkpoints, files, errors, devices, interop."""
