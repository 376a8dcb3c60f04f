"""The SAM2 engine: features, template memory, the palindrome step, training and propagation."""
