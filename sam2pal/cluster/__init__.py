"""Beyond one machine: prediction on a Ray cluster and fine-tuning on several GPUs."""
