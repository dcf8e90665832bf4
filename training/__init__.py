"""cof_training: CoF data, SFT and RL; tiny model factories for tests (imports torch)."""
