"""WaveGrad 2 (Chen et al. 2021) as a DLPO policy: model, front end, corpus, pre-training."""
