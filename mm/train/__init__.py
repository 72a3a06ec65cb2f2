"""Training: ``mm-train`` (Lightning CLI), the training module, stages and optimisation."""
