"""The coordinator side of fedsynth: upload checks, pooling, global training (the Flower ServerApp)."""
