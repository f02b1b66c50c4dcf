"""The site side of fedsynth: the private distillation engine and the Flower ClientApp."""
