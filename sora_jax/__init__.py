"""sora_jax: text-to-video diffusion over latent spacetime patches, in JAX/Flax."""
