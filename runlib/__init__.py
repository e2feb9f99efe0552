"""What every stage shares: the run folder and its split, metrics and the parity budget, plots,
TensorFlow set-up, versions, options and progress."""
